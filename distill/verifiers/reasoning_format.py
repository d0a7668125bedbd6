"""reasoning-format: one closed <think>...</think> block first, then a non-empty answer, within length bounds.

- The think block opens and closes exactly once, and nothing but whitespace comes before it.
  With `require_open_tag: false` the open tag may be missing: chat templates that end the prompt
  with "<think>\\n" (DeepSeek-R1 and its distills) make the completion start inside the block.
- An answer (anything but whitespace) follows the close tag, and neither tag appears in it.
- Lengths are counted in whitespace-separated words by default: they do not depend on a
  tokenizer, and a word count is what a reader judges "too long" by. `length_unit: chars` suits
  languages written without spaces. Each bound is inclusive; None means no bound.
- No truncated generation: a sample whose finish reason is "length" (the token budget ran out)
  fails even if its text looks complete, since the answer may have been cut mid-sentence
  (`reject_truncated: false` turns that off). A block that never closes fails anyway.
The reference is not used. Every verdict is 1.0 or 0.0, never None: the format is always checkable.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from distill.registry import Params
from distill.verifiers import VERIFIERS, Verdict, VerifyContext


class ReasoningFormatParams(Params):
    open_tag: str = Field("<think>", min_length=1)  # what DeepSeek-R1, Qwen3 and QwQ emit
    close_tag: str = Field("</think>", min_length=1)
    # True: a missing open tag usually means the model skipped its reasoning.
    require_open_tag: bool = True
    length_unit: Literal["words", "chars"] = "words"
    # 1: an empty block is what a model emits with thinking switched off.
    min_thinking: int | None = Field(1, ge=0)
    max_thinking: int | None = Field(None, ge=0)
    min_answer: int | None = Field(None, ge=0)  # an answer is required anyway: at least 1
    max_answer: int | None = Field(None, ge=0)
    # A generation cut at max_tokens may end mid-answer however well-formed it looks.
    reject_truncated: bool = True

    @model_validator(mode="after")
    def _consistent(self):
        # Either mistake would reject every sample, silently.
        if self.open_tag == self.close_tag:
            raise ValueError(f"open_tag and close_tag are both {self.open_tag!r}; they must differ")
        for part in ("thinking", "answer"):
            low, high = getattr(self, f"min_{part}"), getattr(self, f"max_{part}")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{part} {low} is above max_{part} {high}")
        return self


def _length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


def _bounds(part: str, text: str, low: int | None, high: int | None, unit: str) -> list[str]:
    n = _length(text, unit)
    if low is not None and n < low:
        return [f"{part} is {n} {unit}, below min_{part} {low}"]
    if high is not None and n > high:
        return [f"{part} is {n} {unit}, above max_{part} {high}"]
    return []


def _structure(text: str, p: ReasoningFormatParams) -> tuple[str, str] | str:
    """(thinking, answer), or what is wrong with the block structure."""
    opened, closed = text.count(p.open_tag), text.count(p.close_tag)
    if opened > 1 or closed > 1:
        return f"{p.open_tag} appears {opened} times and {p.close_tag} {closed} times; expected once each"
    if opened == 0 and p.require_open_tag:
        return f"no {p.open_tag} block" if closed == 0 else f"{p.close_tag} without {p.open_tag}"
    at, end = text.find(p.open_tag), text.find(p.close_tag)
    if closed == 0:
        return f"{p.open_tag} block not closed (truncated generation?)"
    if opened and end < at:
        return f"{p.close_tag} comes before {p.open_tag}"
    if opened and text[:at].strip():
        return f"text before {p.open_tag}: {text[:at].strip()[:40]!r}"
    answer = text[end + len(p.close_tag) :].strip()
    if not answer:
        return f"no answer after {p.close_tag}"
    return text[at + len(p.open_tag) if opened else 0 : end].strip(), answer


def _verdict(completion: object, p: ReasoningFormatParams, finish_reason: str | None = None) -> Verdict:
    text = completion if isinstance(completion, str) else str(completion or "")
    if p.reject_truncated and finish_reason == "length":
        return Verdict(0.0, "truncated: the generation ran out of tokens (finish reason 'length')")
    parts = _structure(text, p)
    if isinstance(parts, str):
        return Verdict(0.0, parts)
    thinking, answer = parts
    unit = p.length_unit
    problems = _bounds("thinking", thinking, p.min_thinking, p.max_thinking, unit)
    problems += _bounds("answer", answer, p.min_answer, p.max_answer, unit)
    if problems:
        return Verdict(0.0, "; ".join(problems))
    return Verdict(1.0, f"thinking {_length(thinking, unit)} {unit}, answer {_length(answer, unit)} {unit}")


@VERIFIERS.register(
    "reasoning-format",
    params=ReasoningFormatParams,
    example="""
verifiers:
  - name: reasoning-format
    require_open_tag: false  # template prefills <think>
    length_unit: words
    min_thinking: 20
    max_thinking: 4000
    max_answer: 300
""",
)
def verify_reasoning_format(
    completions: list[str], references: list[str | None], params: ReasoningFormatParams, ctx: VerifyContext
) -> list[Verdict]:
    """One closed <think> block before a non-empty answer, thinking and answer within length bounds, not truncated."""
    # The reference is not used; zip checks the batch is consistent all the same.
    return [_verdict(c, params, f) for c, _, f in zip(completions, references, ctx.finish_reasons, strict=True)]
