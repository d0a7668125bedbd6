import pytest
from pydantic import ValidationError

from distill.verifiers import VERIFIERS, Verdict, VerifyContext
from distill.verifiers.final_number import FinalNumberParams, verify_final_number


def score(completion, reference, **params):
    [verdict] = verify_final_number([completion], [reference], FinalNumberParams(**params), VerifyContext.blank(1))
    return verdict


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        ("The answer is 42", "42", 1.0),
        ("So x = -7.", "-7", 1.0),
        ("It costs 3.25 dollars", "3.25", 1.0),
        ("0.50", "0.5", 1.0),
        ("Total: 1,234 apples", "1234", 1.0),
        ("Total: 1234", "1,234", 1.0),
        ("Total: 1,234.5", "1234.5", 1.0),
        (r"\boxed{1{,}234}", "1234", 1.0),
        ("first 3, then 5, finally 8", "8", 1.0),
        ("first 3, then 5, finally 8", "3", 0.0),
        (r"so \boxed{12}. Check: 12 - 2 = 10", "12", 1.0),
        (r"\boxed{7} but also \boxed{9} and then 11", "9", 1.0),
        (r"\boxed{x = \frac{1}{2}} so 0.5", "2", 1.0),  # not evaluated: last number in the box
        (r"\boxed{x} and 4", "4", 1.0),  # a box without a number does not win
        (r"\boxed{\text{no}", "3", None),  # unclosed box, no number anywhere
        ("The answer is 42.", "42", 1.0),
        ("It costs $42", "42", 1.0),
        ("Growth was 42%", "42", 1.0),
        ("The area is 42 m^2", "42", 1.0),
        ("The area is 42 m^{2}", "42", 1.0),
        ("10-2 = 8", "8", 1.0),
        ("10-2", "-2", 0.0),  # a minus after a digit is subtraction
        ("answer: \u22125", "-5", 1.0),
        ("half is .5", "0.5", 1.0),
        ("The answer is 41", "42", 0.0),
        ("1,2", "12", 0.0),  # 1,2 is two numbers, not a thousands separator
        ("I don't know", "42", None),
        ("", "42", None),
        (None, "42", None),
        ("The answer is 42", None, None),
        ("The answer is 42", "", None),
        ("The answer is 42", "  ", None),
        ("The answer is 42", "abc", None),
        ("The answer is 4", "3/4", None),  # a fraction reference is not a number
        ("The answer is 42", " 42 ", 1.0),
        ("The answer is 42", 42, 1.0),
    ],
)
def test_final_number_table(completion, reference, expected):
    assert score(completion, reference).score == expected


@pytest.mark.parametrize(
    "completion, reference, tolerance, expected",
    [
        ("0.3333333", "0.333333", 1e-6, 1.0),
        ("0.334", "0.333", 1e-6, 0.0),
        ("0.334", "0.333", 0.01, 1.0),
        ("10000001", "10000000", 1e-6, 0.0),  # absolute, not relative: large counts stay exact
        ("12345678901234567891", "12345678901234567890", 0.0, 0.0),  # no float round-off
        ("0.1", "0.10", 0.0, 1.0),
    ],
)
def test_final_number_tolerance(completion, reference, tolerance, expected):
    assert score(completion, reference, tolerance=tolerance).score == expected


@pytest.mark.parametrize(
    "completion, reference, reason",
    [
        ("The answer is 41", "42", "last number 41 != reference 42"),
        (r"\boxed{42} not 41", "42", "boxed number 42 == reference 42"),
        ("nothing", "42", "no number in completion"),
        ("42", None, "no reference"),
        ("42", "abc", "reference 'abc' is not a number"),
    ],
)
def test_final_number_reasons(completion, reference, reason):
    assert score(completion, reference).reason == reason


def test_final_number_batch_keeps_order():
    verdicts = verify_final_number(["1", "2", "x"], ["1", "3", "4"], FinalNumberParams(), VerifyContext.blank(3))
    assert [v.score for v in verdicts] == [1.0, 0.0, None]
    assert all(isinstance(v, Verdict) for v in verdicts)


def test_registry_holds_both_verifiers():
    assert "final-number" in VERIFIERS and "math" in VERIFIERS
    entry = VERIFIERS.get("final-number")
    assert entry.fn is verify_final_number and entry.params is FinalNumberParams
    assert entry.summary and "\n" not in entry.summary
    assert "name: final-number" in entry.example


@pytest.mark.parametrize("bad", [{"tolerence": 1}, {"tolerance": -1}, {"tolerance": float("inf")}])
def test_final_number_params_rejected(bad):
    with pytest.raises(ValidationError):
        FinalNumberParams(**bad)
