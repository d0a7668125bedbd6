"""IBANs and national ids: found where the checksum or the issuer's rules hold, and nowhere else."""

import pytest

from distill.filters.identifiers import find_identifiers


def found(text):
    return [(f.kind, text[f.start:f.end]) for f in find_identifiers(text)]


@pytest.mark.parametrize("text, expected", [
    # IBAN: mod 97 and the country's length
    ("IBAN DE89 3704 0044 0532 0130 00 EUR", [("iban", "DE89 3704 0044 0532 0130 00")]),
    ("GB82WEST12345698765432", [("iban", "GB82WEST12345698765432")]),
    ("NO93 8601 1117 947.", [("iban", "NO93 8601 1117 947")]),
    ("DE89 3704 0044 0532 0130 01", []),  # one digit off: the checksum fails
    ("DE89 3704 0044 0532 0130", []),  # too short for Germany
    ("XX89 3704 0044 0532 0130 00", []),  # no such country
    # national ids
    ("SSN: 536-22-1847", [("national-id", "536-22-1847")]),
    ("ssn 536221847", [("national-id", "536221847")]),
    ("536221847", []),  # nine bare digits need the keyword
    ("000-12-3456 666-12-3456 912-12-3456 123-00-4567 123-45-0000", []),  # never issued
    ("NINO AB 12 34 56 C", [("national-id", "AB 12 34 56 C")]),
    ("QQ123456C DA123456A BG123456A", []),  # prefixes never issued
    ("DNI 12345678Z, NIE X1234567L", [("national-id", "12345678Z"), ("national-id", "X1234567L")]),
    ("12345678A", []),  # the wrong check letter
    ("CF RSSMRA85T10A562S", [("national-id", "RSSMRA85T10A562S")]),
    ("RSSMRA85T10A562T", []),
    ("NIR 2 55 08 14 168 025 38", [("national-id", "2 55 08 14 168 025 38")]),
    ("2 55 08 14 168 025 39", []),
    ("personnummer 811218-9876", [("national-id", "811218-9876")]),
    ("811218-9875", []),  # Luhn fails
    ("BSN 111222333", [("national-id", "111222333")]),
    ("BSN 111222334", []),
    ("PESEL 44051401359", [("national-id", "44051401359")]),
    ("PESEL 44051401358", []),
    ("Steuer-ID 86095742719", [("national-id", "86095742719")]),
    ("Steuer-ID 86095742718", []),
    # numbers that are none of these
    ("order 4471 shipped on 2025-05-01, total 1234567890", []),
    ("version 1.2.3, port 8080", []),
])
def test_identifiers(text, expected):
    assert found(text) == expected
