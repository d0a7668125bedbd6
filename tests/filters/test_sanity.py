"""length and language: bounds in words, characters or tokens; languages detected on prose only."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from distill.filters import FilterContext
from distill.filters.sanity import LanguageParams, LengthParams, filter_language, filter_length


def row(completion, tokens=0, prompt="q"):
    return {"completion": completion, "completion_tokens": tokens, "prompt_text": prompt}


@pytest.mark.parametrize("completion, tokens, params, flagged, category", [
    ("", 0, {}, True, "too short"),  # the default min of 1 word
    ("one two three", 3, {}, False, ""),
    ("one two three", 3, {"max": 2}, True, "too long"),
    ("one two three", 3, {"min": 3, "max": 3}, False, ""),
    ("abcdef", 1, {"unit": "chars", "max": 5}, True, "too long"),
    ("abcdef", 40, {"unit": "tokens", "min": 50}, True, "too short"),
    ("abcdef", 40, {"unit": "tokens", "min": None, "max": None}, False, ""),
])
def test_length_table(completion, tokens, params, flagged, category):
    [v] = filter_length([row(completion, tokens)], LengthParams(**params), FilterContext())
    assert (v.flagged, v.category) == (flagged, category)


def test_length_bounds_must_be_ordered():
    with pytest.raises(ValidationError, match="above max"):
        LengthParams(min=10, max=5)


@pytest.mark.parametrize("completion, allowed, flagged", [
    ("Tom has three apples and buys two more, so he now has five apples in his basket.", ["en"], False),
    ("Marie a trois pommes et elle en achète deux autres, donc elle a cinq pommes.", ["en"], True),
    ("Marie a trois pommes et elle en achète deux autres, donc elle a cinq pommes.", ["en", "fr"], False),
    ("Tom hat drei Äpfel und kauft noch zwei dazu, also hat er jetzt fünf Äpfel.", ["en"], True),
    ("42", ["en"], False),  # nothing to judge
    ("$3 + 4 = 7$ so \\(x = 7\\)", ["en"], False),  # maths is removed before detection
    ("```python\nprint('bonjour tout le monde, comment allez vous')\n```\nThe code prints a greeting.", ["en"], False),
])
def test_language_table(completion, allowed, flagged):
    [v] = filter_language([row(completion)], LanguageParams(allowed=allowed), FilterContext())
    assert v.flagged is flagged, v.reason


def test_language_decides_the_same_way_every_time():
    text = "Die Antwort ist fünf, weil drei und zwei fünf ergeben."
    reasons = {filter_language([row(text)], LanguageParams(), FilterContext())[0].reason for _ in range(5)}
    assert len(reasons) == 1


def test_unknown_language_code_is_refused():
    with pytest.raises(ValidationError, match="unknown language codes"):
        LanguageParams(allowed=["english"])
