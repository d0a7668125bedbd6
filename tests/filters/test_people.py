"""Names and addresses by rule: each cue finds what it should, and ordinary text stays as it is."""

import pytest

from distill.filters.people import find_by_key, find_people


def found(text):
    return [(f.kind, text[f.start:f.end]) for f in find_people(text)]


@pytest.mark.parametrize("text, expected", [
    ("Hi, my name is Maria Gonzalez.", [("person", "Maria Gonzalez")]),
    ("Send it to Dr. Aisha Okafor today", [("person", "Aisha Okafor")]),
    ("Please book a table for Jean-Pierre Dubois tomorrow.", [("person", "Jean-Pierre Dubois")]),
    ("Call Sven Eriksson about it.", [("person", "Sven Eriksson")]),
    ("Regards,\nPriya Raghunathan", [("person", "Priya Raghunathan")]),
    ("Dear Olga,\nthanks", [("person", "Olga")]),
    ("Liam O'Connor called", [("person", "Liam O'Connor")]),
    ("I'm Kenji Watanabe", [("person", "Kenji Watanabe")]),
    ("Grüße,\nJürgen Müller", [("person", "Jürgen Müller")]),
    # addresses
    ("I live at 42 Elm Street, Springfield, IL 62704.", [("address", "42 Elm Street, Springfield, IL 62704")]),
    ("221B Baker Street, London NW1 6XE", [("address", "221B Baker Street, London NW1 6XE")]),
    ("12 rue de la Paix, 75002 Paris", [("address", "12 rue de la Paix, 75002 Paris")]),
    ("Via Roma 12, 00184 Roma", [("address", "Via Roma 12, 00184 Roma")]),
    ("Hauptstraße 5, 10115 Berlin", [("address", "Hauptstraße 5, 10115 Berlin")]),
    ("PO Box 1234", [("address", "PO Box 1234")]),
    ("postcode SW1A 1AA", [("address", "SW1A 1AA")]),
    # not people, not places
    ("Dear Team,", []),
    ("Best,\nThe Support Team", []),
    ("This is Urgent Request", []),
    ("Bill Payment due", []),
    ("I ran 3 times and rang 5 times", []),
    ("The weather in Paris is mild.", []),
])
def test_people(text, expected):
    assert found(text) == expected


@pytest.mark.parametrize("key, value, kind", [
    ("passenger_name", "Kenji Watanabe", "person"),
    ("last_name", "Romano", "person"),
    ("name", "Maria Lopez", "person"),  # generic key: starts with a known given name
    ("name", "get_weather", None),
    ("name", "Blue Widget", None),
    ("shipping_address", "350 Fifth Avenue, New York", "address"),
    ("zip", "62704", "address"),
    ("city", "Springfield", None),
])
def test_values_judged_by_their_key(key, value, kind):
    got = find_by_key(key, value)
    assert [f.kind for f in got] == ([kind] if kind else [])
