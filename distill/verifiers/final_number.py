"""final-number: the completion's final number must equal the reference number.

Which number counts:
- If the completion has a \\boxed{...} holding a number, the last number in the last such box wins,
  whatever text follows it; otherwise the last number anywhere in the completion.
- A number is an optional minus sign, digits (a comma followed by exactly three digits is a
  thousands separator, so 1,234 is 1234 while 1,2 are two numbers; LaTeX 1{,}234 works too)
  and an optional decimal part: 42, -3, 0.5, .5, 1,234.5. A final "." ("is 42.") is punctuation.
- Units and symbols around it are ignored: "$42", "42%" and "42 cm" all read as 42.
- A minus sign joined to a preceding digit or letter is subtraction, not a sign: "10-2" is 10 and 2.
- Exponents are skipped ("42 m^2" is 42) and so are digits glued to letters ("x2", "v1").
- Nothing is evaluated: "3/4" reads as 4, and scientific notation is not recognised. Use the
  `math` verifier for expressions.

The reference must be exactly one such number (surrounding whitespace allowed), else the verdict
is None. Numbers are compared exactly as decimals (no float round-off), within an absolute
`tolerance`; not a relative one, which would accept off-by-one answers to large counts.
"""

from __future__ import annotations

import re
from fractions import Fraction

from pydantic import Field

from distill.registry import Params
from distill.verifiers import VERIFIERS, Verdict, VerifyContext

_NUMBER = re.compile(
    r"(?<![\w.^])(?<!\^\{)"  # not part of a word, a decimal or an exponent
    r"[-\u2212]?(?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?(?![0-9])"
    r"|(?<![\w.^])[-\u2212]?\.[0-9]+"
)
_BOXED = re.compile(r"\\boxed\s*\{")


class FinalNumberParams(Params):
    # 1e-6: absorbs over-long decimals (0.3333333 vs 0.333333) yet fails any real difference.
    tolerance: float = Field(1e-6, ge=0, allow_inf_nan=False)


def _boxed_contents(text: str) -> list[str]:
    """The contents of every \\boxed{...}, braces balanced; an unclosed box runs to the end."""
    contents = []
    for match in _BOXED.finditer(text):
        depth, start = 1, match.end()
        end = start
        while end < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            end += 1
        contents.append(text[start : end - 1] if depth == 0 else text[start:])
    return contents


def _final_number(text: str) -> tuple[str, str] | None:
    """(number as written, where it was found) or None."""
    text = text.replace("{,}", ",")
    for content in reversed(_boxed_contents(text)):
        numbers = _NUMBER.findall(content)
        if numbers:
            return numbers[-1], "boxed number"
    numbers = _NUMBER.findall(text)
    return (numbers[-1], "last number") if numbers else None


def _value(number: str) -> Fraction:
    return Fraction(number.replace(",", "").replace("\u2212", "-"))


def _verdict(completion: object, reference: object, tolerance: Fraction) -> Verdict:
    if reference is None or not str(reference).strip():
        return Verdict(None, "no reference")
    ref = str(reference).strip()
    if not _NUMBER.fullmatch(ref.replace("{,}", ",")):
        return Verdict(None, f"reference {ref!r} is not a number")
    found = _final_number(completion if isinstance(completion, str) else str(completion or ""))
    if found is None:
        return Verdict(None, "no number in completion")
    number, where = found
    if abs(_value(number) - _value(ref.replace("{,}", ","))) <= tolerance:
        return Verdict(1.0, f"{where} {number} == reference {ref}")
    return Verdict(0.0, f"{where} {number} != reference {ref}")


@VERIFIERS.register(
    "final-number",
    params=FinalNumberParams,
    example="""
verifiers:
  - name: final-number
    tolerance: 0.000001
""",
)
def verify_final_number(
    completions: list[str], references: list[str | None], params: FinalNumberParams, ctx: VerifyContext
) -> list[Verdict]:
    """The completion's last number (a boxed one wins) equals the reference within tolerance."""
    tolerance = Fraction(str(params.tolerance))
    return [_verdict(c, r, tolerance) for c, r in zip(completions, references, strict=True)]
