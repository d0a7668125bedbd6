"""match: the completion equals the reference, as a label (`mode: text`) or as a JSON object (`mode: json`).

For answers with one right form: a classification's label, an extraction's fields, such as the
logged answers `distill usage plan` exports as references. Text before the last
`think_close_tag` ("</think>") is not read, on either mode: a reasoning block is not the answer.

text: both sides are normalised, then compared. Surrounding whitespace goes, then one pair of
surrounding quotes or backticks ('positive', "positive", `positive`) and one trailing period
(inside or outside the quotes); inner runs of whitespace become one space; case is ignored
unless `case_sensitive`. Score 1.0 or 0.0; the reason quotes what was expected and what was found
(each cut to 60 characters).

json: the reference is a JSON object (text, the Python literal a prompt file's object field
becomes, or an object already). The completion's object is the whole completion, else the first
```json (or unlabelled) fenced block holding one, else the first balanced {...} in the text; with
none, 0.0 and a reason starting "not JSON:". The compared fields are `fields`, or every key of the
reference. A field matches when both values are equal JSON: strings after stripping surrounding
whitespace, numbers by value (1 equals 1.0; "42" and 42 differ, and so do true and 1), lists item
by item in order, objects key by key (all keys, nested). A field missing from the answer differs;
one missing from both matches. Keys of the answer that are not compared are ignored, and named in
the reason. Score 1.0 only when every compared field matches, else 0.0; the reason names the
fields that differ ("2 of 6 fields differ: email, amount (missing)"), never their values.

None when there is no reference; in json mode also when the reference is not a JSON object, or an
empty one (nothing to compare).
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

from pydantic import Field, model_validator

from distill.registry import Params
from distill.verifiers import VERIFIERS, Verdict, VerifyContext, parse_reference

QUOTES = "\"'`"
SHOWN_CHARS = 60  # of each value in a text-mode reason: two values stay within 120 characters
SHOWN_NAMES = 10  # field names listed in a reason; the rest are counted
_FENCE = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_MISSING = object()


class MatchParams(Params):
    mode: Literal["text", "json"] = "text"
    # text mode; False: a label's case carries no meaning ("Positive" is "positive").
    case_sensitive: bool = False
    # json mode: the keys compared; None: every key of the reference.
    fields: list[str] | None = Field(None, min_length=1)
    # Text up to this tag is not read: a reasoning block is not the answer. None: read it all.
    think_close_tag: str | None = Field("</think>", min_length=1)

    @model_validator(mode="after")
    def _fits_the_mode(self) -> MatchParams:
        # Either would be ignored silently in the other mode.
        if self.mode == "text" and self.fields is not None:
            raise ValueError("fields are compared in mode json; set mode: json, or remove fields")
        if self.mode == "json" and "case_sensitive" in self.model_fields_set:
            raise ValueError("case_sensitive applies to mode text (JSON strings are compared exactly); remove it")
        return self


def _shown(text: str) -> str:
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS - 3] + "...")


def normalise(text: str, case_sensitive: bool = False) -> str:
    """A label as compared: stripped, unquoted, without a trailing period, spaces collapsed, casefolded."""
    s = text.strip()
    if len(s) > 2 and s[-1] == "." and s[-2] in QUOTES and s[0] == s[-2]:  # "yes". : the period after the quote
        s = s[:-1]
    if len(s) >= 2 and s[0] == s[-1] and s[0] in QUOTES:
        s = s[1:-1].strip()
    s = " ".join(s.removesuffix(".").split())
    return s if case_sensitive else s.casefold()


def _text_verdict(completion: str, reference: str, case_sensitive: bool) -> Verdict:
    want, got = normalise(reference, case_sensitive), normalise(completion, case_sensitive)
    if not want:
        return Verdict(None, "no reference")
    if got == want:
        return Verdict(1.0, f"equals the reference {_shown(want)}")
    return Verdict(0.0, f"expected {_shown(want)}, found {_shown(got)}")


def find_object(text: str) -> dict | None:
    """The completion's JSON object: the whole text, else the first fenced block holding one, else
    the first balanced {...}; None when there is none."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return whole
    for lang, body in _FENCE.findall(text):
        if lang.lower() in ("", "json"):
            try:
                value = json.loads(body)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", text)):
        try:
            value, _ = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def same(a: Any, b: Any) -> bool:
    """Equal as JSON values: strings stripped, numbers by value, a bool only equal to a bool."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, str) and isinstance(b, str):
        return a.strip() == b.strip()
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a is None and b is None  # otherwise two types: "42" and 42 differ


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN_NAMES])
    return shown + (f" and {len(names) - SHOWN_NAMES} more" if len(names) > SHOWN_NAMES else "")


def _json_verdict(completion: str, reference: Any, fields: list[str] | None) -> Verdict:
    if isinstance(reference, str):
        try:
            reference = parse_reference(reference.strip())
        except ValueError as e:
            return Verdict(None, str(e))
    if not isinstance(reference, dict):
        return Verdict(None, f"reference is a {type(reference).__name__}, not a JSON object; mode json compares "
                             "the fields of an object (use mode: text for a label)")
    compared = fields if fields is not None else list(reference)
    if not compared:
        return Verdict(None, "reference is an empty object: no fields to compare")
    answer = find_object(completion)
    if answer is None:
        return Verdict(0.0, "not JSON: no JSON object in the completion (whole, in a ```json block, or as {...})")
    differ = [f"{k} (missing)" if k not in answer else k for k in compared
              if not _field_matches(reference.get(k, _MISSING), answer.get(k, _MISSING))]
    extra = [k for k in answer if k not in compared]
    tail = f"; extra keys ignored: {_names(extra)}" if extra else ""
    if differ:
        return Verdict(0.0, f"{len(differ)} of {len(compared)} fields differ: {_names(differ)}{tail}")
    return Verdict(1.0, f"all {len(compared)} fields match{tail}")


def _field_matches(want: Any, got: Any) -> bool:
    if want is _MISSING or got is _MISSING:  # a field neither side has matches
        return want is got
    return same(want, got)


def _verdict(completion: object, reference: object, p: MatchParams) -> Verdict:
    if reference is None or (isinstance(reference, str) and not reference.strip()):
        return Verdict(None, "no reference")
    text = completion if isinstance(completion, str) else str(completion or "")
    if p.think_close_tag:
        text = text.rpartition(p.think_close_tag)[2]
    if p.mode == "json":
        return _json_verdict(text, reference, p.fields)
    return _text_verdict(text, str(reference), p.case_sensitive)


@VERIFIERS.register(
    "match",
    params=MatchParams,
    example="""
verifiers:
  # reference: the label, e.g. "refund"; with mode: json, an object such as {"email": ..., "amount": ...}
  - name: match
    mode: text
    case_sensitive: false
""",
)
def verify_match(
    completions: list[str], references: list[str | None], params: MatchParams, ctx: VerifyContext
) -> list[Verdict]:
    """The completion equals the reference: a label (case, quotes, spacing aside) or a JSON object's fields."""
    return [_verdict(c, r, params) for c, r in zip(completions, references, strict=True)]
