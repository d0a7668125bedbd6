import threading
import time

import pytest
from pydantic import ValidationError

from distill.verifiers import VERIFIERS, VerifyContext
from distill.verifiers.math import MathParams, verify_math


def score(completion, reference):
    [verdict] = verify_math([completion], [reference], MathParams(), VerifyContext.blank(1))
    return verdict


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        (r"The answer is $\frac{1}{2}$", "0.5", 1.0),
        (r"\boxed{0.5}", r"\frac{1}{2}", 1.0),
        (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt2}", 1.0),
        ("The answer is 016", "16", 1.0),
        (r"\boxed{1,234}", "1234", 1.0),
        (r"$\boxed{(x+1)^2}$", "x^2+2x+1", 1.0),
        (r"\boxed{x = 3}", "3", 1.0),
        (r"\boxed{\pi}", "3.14159265", 1.0),
        (r"The answer is \boxed{5} cm", "5", 1.0),
        (r"The answer is $\boxed{5 \text{ cm}}$", "5", 1.0),
        ("The answer is 5 cm", "5", 1.0),
        # math_verify is lenient with percent: 10\% matches both 10 and 0.1, but 0.1 is not 10.
        (r"\boxed{10\%}", "10", 1.0),
        (r"\boxed{10\%}", "0.1", 1.0),
        (r"\boxed{0.1}", r"10\%", 1.0),
        (r"\boxed{10}", r"10\%", 1.0),
        (r"\boxed{0.1}", "10", 0.0),
        (r"So the interval is $(1, 2]$", "(1,2]", 1.0),
        (r"So the interval is $(1, 2)$", "(1,2]", 0.0),
        (r"So the interval is $[1, 2]$", "(1,2]", 0.0),
        (r"The set is $\{1,2\}$", r"\{2,1\}", 1.0),
        (r"The set is $\{1,3\}$", r"\{2,1\}", 0.0),
        # Bare LaTeX without $ or \boxed is not found in a completion, only in the reference.
        (r"\{1,2\}", r"\{2,1\}", None),
        (r"\boxed{2, 3}", "2, 3", 1.0),
        (r"\boxed{3}", "2, 3", 0.0),  # wrapping the reference in $ keeps the whole set
        (r"\boxed{41}", "42", 0.0),
        (r"\boxed{3.14}", r"\pi", 0.0),  # rounded pi is not pi
        (r"I think 3 then 4 and finally \boxed{7}. Check: 8", "7", 1.0),
        ("", "5", None),
        ("I am not sure", "5", None),
        (None, "5", None),
        (r"\boxed{5}", None, None),
        (r"\boxed{5}", "", None),
        (r"\boxed{5}", "   ", None),
        (r"\boxed{5}", r"\frac{", None),  # reference does not parse
        (r"\boxed{5}", "abc", 0.0),  # letters parse as symbols: abc is a*b*c, a real expression
    ],
)
def test_math_table(completion, reference, expected):
    assert score(completion, reference).score == expected


def test_math_reasons():
    assert score(r"\boxed{5}", None).reason == "no reference"
    assert "does not parse" in score(r"\boxed{5}", r"\frac{").reason
    assert score("nothing here", "5").reason == "no parsable answer in completion"
    assert score(r"\boxed{4}", "5").reason == "answer 4 is not equivalent to reference 5"


def test_math_off_main_thread():
    # math_verify's signal-based timeout works on a main thread only: the worker process has one.
    results = []
    batch = ([r"\boxed{0.5}", r"\boxed{1}"], [r"\frac12", "2"], MathParams(), VerifyContext.blank(2))
    worker = threading.Thread(target=lambda: results.extend(verify_math(*batch)))
    worker.start()
    worker.join(timeout=60)
    assert [v.score for v in results] == [1.0, 0.0]


def test_math_never_raises(monkeypatch):
    import distill.verifiers.math as module

    def boom(*args, **kwargs):
        raise RuntimeError("kaput")

    monkeypatch.setattr(module, "verify", boom)  # the worker's side, called here in-process
    verdict = module.judge(r"\boxed{1}", "1", 5)
    assert verdict.score is None and "kaput" in verdict.reason


def test_a_pathological_answer_is_bounded_in_any_thread():
    """A tower of exponents against a number kept math_verify (and, holding the GIL, the whole
    process) busy for minutes off the main thread, where its timeout was off. In the worker its
    timeout holds (math_verify then says not equivalent, which the verdict corrects to "cannot
    verify"), and the next answer is judged; what no signal interrupts, the worker's kill stops
    (tests/verifiers/test_hard_limit.py)."""
    results = []
    batch = ([r"\boxed{9^{9^{9^{9^{9}}}}}", r"\boxed{2}"], ["5", "2"],
             MathParams(timeout_seconds=1), VerifyContext.blank(2))
    started = time.monotonic()
    worker = threading.Thread(target=lambda: results.extend(verify_math(*batch)))
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive()
    first, second = results
    assert first.score is None and "stopped" in first.reason
    assert second.score == 1.0
    assert time.monotonic() - started < 90


def test_math_registered_with_params():
    entry = VERIFIERS.get("math")
    assert entry.fn is verify_math and entry.params is MathParams
    assert entry.summary and "\n" not in entry.summary
    with pytest.raises(ValidationError):
        MathParams(timeout=3)
    with pytest.raises(ValidationError):
        MathParams(timeout_seconds=0)
