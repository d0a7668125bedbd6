"""math: symbolic equivalence of the completion's answer and the reference, via math_verify.

- The reference is the bare answer. Unless it already has math delimiters ($, \\(, \\[ or
  \\boxed), it is wrapped in $...$ first: math_verify's default extraction finds nothing in bare
  LaTeX such as "(1,2]" or "\\frac{\\sqrt2}{2}", and reads "2, 3" as just 3.
  Any text then parses, letters as symbols: "abc" is the product a*b*c, not an error.
- The completion is free text, parsed with math_verify's defaults (LaTeX and plain expressions;
  the final-answer phrasing or a \\boxed{} decides which candidate is taken).
- Time limits: each completion is judged in a worker process (distill/verifiers/hard_limit.py),
  on its main thread, where math_verify's own `timeout_seconds` works (it uses signal.alarm);
  the worker is killed when parsing and verifying take longer than their three timeouts together
  (plus a second), which also stops a computation no signal interrupts. The verdict is then None,
  with the reason, and the run goes on, whichever thread called.
- None when there is no reference, when either side gives no sympy expression, or when
  math_verify fails.
"""

from __future__ import annotations

import time

from math_verify import parse, verify
from math_verify.errors import TimeoutException
from pydantic import Field
from sympy import Basic, MatrixBase

from distill.registry import Params
from distill.verifiers import VERIFIERS, Verdict, VerifyContext, hard_limit

_DELIMITERS = ("$", "\\(", "\\[", "\\boxed")


class MathParams(Params):
    # 5 s: math_verify's own default; simplifying a real answer takes well under a second.
    timeout_seconds: int = Field(5, ge=1)


def _parse(text: str, timeout: int | None) -> tuple[list, str | None]:
    """(math_verify's parse result, the matched text) or ([], None) without a sympy expression."""
    parsed = parse(text, parsing_timeout=timeout)
    if not any(isinstance(p, (Basic, MatrixBase)) for p in parsed):
        return [], None
    return parsed, next((p for p in parsed if isinstance(p, str)), "?")


def _verdict(completion: object, reference: object, timeout: int | None) -> Verdict:
    if reference is None or not str(reference).strip():
        return Verdict(None, "no reference")
    ref = str(reference).strip()
    gold, _ = _parse(ref if any(d in ref for d in _DELIMITERS) else f"${ref}$", timeout)
    if not gold:
        return Verdict(None, f"reference {ref!r} does not parse as math")
    text = completion if isinstance(completion, str) else str(completion or "")
    answer, text = _parse(text, timeout)
    if not answer:
        return Verdict(None, "no parsable answer in completion")
    # gold first: math_verify's verify is not symmetric.
    started = time.monotonic()
    if verify(gold, answer, timeout_seconds=timeout):
        return Verdict(1.0, f"answer {text} is equivalent to reference {ref}")
    if timeout and time.monotonic() - started >= timeout:  # math_verify says False when its timeout cut it short
        return Verdict(None, f"comparing answer {text} with reference {ref} took over {timeout} s: stopped")
    return Verdict(0.0, f"answer {text} is not equivalent to reference {ref}")


@VERIFIERS.register(
    "math",
    params=MathParams,
    example="""
verifiers:
  - name: math
    timeout_seconds: 5
""",
)
def verify_math(
    completions: list[str], references: list[str | None], params: MathParams, ctx: VerifyContext
) -> list[Verdict]:
    """The completion's final answer is mathematically equivalent to the reference (math_verify)."""
    limit = 3 * params.timeout_seconds + 1  # two parses and a verify, each bounded by math_verify
    verdicts = []
    for completion, reference in zip(completions, references, strict=True):
        out = hard_limit.call(judge, (completion, reference, params.timeout_seconds), limit)
        if out.timed_out:
            verdicts.append(Verdict(None, f"math_verify took over {limit} s: stopped"))
        elif out.error is not None:
            verdicts.append(Verdict(None, f"math_verify error: {out.error}"))
        else:
            verdicts.append(out.value)
    return verdicts


def judge(completion: object, reference: object, timeout: int) -> Verdict:
    """One completion's verdict; runs in the worker process. Never raises."""
    try:
        return _verdict(completion, reference, timeout)
    except (Exception, TimeoutException) as e:  # TimeoutException is a BaseException
        return Verdict(None, f"math_verify error: {type(e).__name__}: {e}")
