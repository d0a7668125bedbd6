import json

import pytest
from pydantic import ValidationError

from distill.verifiers import VERIFIERS, Verdict, VerifyContext
from distill.verifiers.match import MatchParams, find_object, verify_match


def score(completion, reference, **params):
    [verdict] = verify_match([completion], [reference], MatchParams(**params), VerifyContext.blank(1))
    return verdict


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("refund", "refund", 1.0),
        ("  Refund \n", "refund", 1.0),  # whitespace and case aside
        ('"refund"', "refund", 1.0),
        ("'refund'", "refund", 1.0),
        ("`refund`", "refund", 1.0),
        ("refund.", "refund", 1.0),
        ('"refund".', "refund", 1.0),  # the period after the quotes
        ('"refund."', "refund", 1.0),  # the period inside them
        ("refund", '"Refund."', 1.0),  # the reference is normalised the same way
        ("billing   question", "Billing question", 1.0),
        ("billing\n question", "billing question", 1.0),
        ("STRASSE", "straße", 1.0),  # casefold, not lower
        ("refunds", "refund", 0.0),
        ("refund please", "refund", 0.0),
        ("''refund''", "refund", 0.0),  # only one pair of quotes goes
        ('"refund\'', "refund", 0.0),  # quotes that do not pair stay
        ("refund..", "refund", 0.0),  # only one period goes
        ("", "refund", 0.0),
        (None, "refund", 0.0),
        ("<think>maybe billing</think>\nrefund", "refund", 1.0),  # the reasoning block is not the answer
        ("<think>refund</think>\nbilling", "refund", 0.0),
        ("refund", None, None),
        ("refund", "", None),
        ("refund", "  ", None),
        ("refund", '""', None),  # nothing left of the reference
    ],
)
def test_text_mode(completion, reference, expected):
    assert score(completion, reference).score == expected


def test_text_mode_case_sensitive():
    assert score("Refund", "refund", case_sensitive=True).score == 0.0
    assert score(" 'Refund'. ", "Refund", case_sensitive=True).score == 1.0


def test_text_reasons_say_what_was_expected_and_found_and_stay_short():
    assert score("billing", "refund") == Verdict(0.0, "expected 'refund', found 'billing'")
    assert score('"Refund"', "refund") == Verdict(1.0, "equals the reference 'refund'")
    assert score("x", None) == Verdict(None, "no reference")
    long = score("b" * 500, "a" * 500)
    assert long.score == 0.0 and long.reason.count("a") + long.reason.count("b") <= 120
    assert "..." in long.reason


REF = {"email": "ann@example.com", "amount": 42, "currency": "EUR", "paid": True, "items": ["a", "b"],
       "address": {"city": "Paris", "zip": "75001"}}


@pytest.mark.parametrize(
    "completion, expected",
    [
        (json.dumps(REF), 1.0),
        (json.dumps(dict(reversed(list(REF.items())))), 1.0),  # key order aside
        ("Here it is:\n```json\n" + json.dumps(REF, indent=2) + "\n```\nDone.", 1.0),
        ("```\n" + json.dumps(REF) + "\n```", 1.0),  # an unlabelled fence
        ("The fields are " + json.dumps(REF) + " as asked.", 1.0),  # the first balanced {...}
        ("```python\nx = {'a': 1}\n```\n" + json.dumps(REF), 1.0),  # a python block is not JSON
        ("<think>{\"amount\": 1}</think>" + json.dumps(REF), 1.0),  # a draft while reasoning is skipped
        (json.dumps({**REF, "amount": 42.0}), 1.0),  # numbers by value
        (json.dumps({**REF, "email": "  ann@example.com "}), 1.0),  # strings stripped
        (json.dumps({**REF, "note": "extra"}), 1.0),  # extra keys are ignored
        (json.dumps({**REF, "amount": "42"}), 0.0),  # "42" is not 42
        (json.dumps({**REF, "paid": 1}), 0.0),  # 1 is not true
        (json.dumps({**REF, "email": "Ann@example.com"}), 0.0),  # JSON strings keep their case
        (json.dumps({**REF, "items": ["b", "a"]}), 0.0),  # list order counts
        (json.dumps({**REF, "address": {"city": "Paris"}}), 0.0),  # nested objects key by key
        (json.dumps({**REF, "address": {"city": "Paris", "zip": "75001", "x": 1}}), 0.0),
        (json.dumps({k: v for k, v in REF.items() if k != "amount"}), 0.0),  # a missing field differs
        (json.dumps({**REF, "currency": None}), 0.0),
        ("no JSON here", 0.0),
        ('{"email": "ann@example.com", "amount": 4', 0.0),  # unbalanced
        (json.dumps([REF]), 1.0),  # not an object as a whole: its first balanced {...} is
    ],
)
def test_json_mode(completion, expected):
    assert score(completion, json.dumps(REF), mode="json").score == expected


def test_json_reference_forms():
    answer = json.dumps(REF)
    assert score(answer, REF, mode="json").score == 1.0  # an object already
    assert score(answer, repr(REF), mode="json").score == 1.0  # the Python literal of a prompt file's field
    assert score('{"a": null}', '{"a": null}', mode="json").score == 1.0
    for reference, why in [(None, "no reference"), ("", "no reference"), ("{}", "empty object"),
                           ("[1, 2]", "not a JSON object"), ('"refund"', "not a JSON object"),
                           ("42", "not a JSON object"), ("{not json", "reference is not JSON")]:
        verdict = score(answer, reference, mode="json")
        assert verdict.score is None and why in verdict.reason, (reference, verdict)


def test_json_fields_compare_only_those_keys():
    answer = json.dumps({**REF, "amount": 41, "currency": "USD"})
    assert score(answer, REF, mode="json", fields=["email", "paid"]) == Verdict(
        1.0, "all 2 fields match; extra keys ignored: amount, currency, items, address")
    assert score(answer, REF, mode="json", fields=["email", "amount"]).score == 0.0
    # A field neither side has matches; one only the answer has differs.
    assert score('{"email": "ann@example.com"}', REF, mode="json", fields=["email", "phone"]).score == 1.0
    assert score('{"email": "ann@example.com", "phone": "1"}', REF, mode="json", fields=["email", "phone"]).score == 0.0


def test_json_reasons_name_fields_and_counts_never_values():
    secret = "s3cr3t-" + "x" * 300
    ref = {**REF, "token": secret}
    answer = {**REF, "email": "bob@example.com", "token": "other-" + "y" * 300}
    del answer["amount"]
    verdict = score(json.dumps({**answer, "note": secret}), ref, mode="json")
    assert verdict == Verdict(0.0, "3 of 7 fields differ: email, amount (missing), token; extra keys ignored: note")
    assert "bob" not in verdict.reason and "s3cr3t" not in verdict.reason
    assert score("plain words", REF, mode="json") == Verdict(
        0.0, "not JSON: no JSON object in the completion (whole, in a ```json block, or as {...})")
    many = {f"k{i}": i for i in range(25)}
    reason = score("{}", many, mode="json").reason
    assert reason.startswith("25 of 25 fields differ: k0 (missing), k1 (missing)") and reason.endswith("and 15 more")


def test_find_object():
    assert find_object('{"a": 1}') == {"a": 1}
    assert find_object('text {"a": {"b": "}"}} and {"c": 2}') == {"a": {"b": "}"}}  # braces inside strings
    assert find_object("{broken {\"a\": 1}") == {"a": 1}
    assert find_object("[1, 2]") is None and find_object("") is None


def test_params_are_checked():
    with pytest.raises(ValidationError, match="fields are compared in mode json"):
        MatchParams(fields=["email"])
    with pytest.raises(ValidationError, match="case_sensitive applies to mode text"):
        MatchParams(mode="json", case_sensitive=True)
    with pytest.raises(ValidationError):
        MatchParams(mode="xml")
    with pytest.raises(ValidationError):
        MatchParams(mode="json", fields=[])
    with pytest.raises(ValidationError, match="extra"):
        MatchParams(casesensitive=True)
    assert MatchParams(mode="json", fields=["a"]).fields == ["a"]


def test_registered_and_batched():
    assert "match" in VERIFIERS.names()
    entry = VERIFIERS.get("match")
    verdicts = entry.fn(["yes", "no", "maybe"], ["yes", "yes", None], MatchParams(), VerifyContext.blank(3))
    assert [v.score for v in verdicts] == [1.0, 0.0, None]
