"""Sanity filters: `length` (bounds on a completion's size) and `language` (the language it is written in).

length: counts the completion in words (whitespace-separated), characters, or tokens (the
teacher's own count, recorded on each sample); each bound is inclusive and None means none.

language: detects the language of the completion (or prompt) with langdetect, whose profiles
ship in its wheel, seeded so a rerun decides the same way. Fenced code, inline code and LaTeX
are removed first, and a text with fewer than `min_letters` letters left (a bare number, an
equation) is not judged: detection on it is noise. Languages are langdetect's codes: ISO 639-1
("en", "fr", "de", ...) plus "zh-cn" and "zh-tw".
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, model_validator

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.registry import Params


class LengthParams(Params):
    unit: Literal["words", "chars", "tokens"] = "words"
    min: int | None = Field(1, ge=0)  # 1: an empty completion teaches nothing
    max: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self):
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}: every row would be flagged")
        return self


def _size(row: dict, unit: str) -> int:
    text = row["completion"] or ""
    if unit == "tokens":
        return int(row.get("completion_tokens") or 0)
    return len(text.split()) if unit == "words" else len(text)


@FILTERS.register("length", params=LengthParams, example="""
filters:
  - name: length
    unit: tokens      # words | chars | tokens (the teacher's count)
    min: 8
    max: 2048
""")
def filter_length(rows: list[dict], params: LengthParams, ctx: FilterContext) -> list[FilterVerdict]:
    """Completions shorter or longer than the bounds, in words, characters or tokens."""
    out = []
    for r in rows:
        n = _size(r, params.unit)
        if params.min is not None and n < params.min:
            out.append(FilterVerdict(True, f"{n} {params.unit}, below min {params.min}", "too short"))
        elif params.max is not None and n > params.max:
            out.append(FilterVerdict(True, f"{n} {params.unit}, above max {params.max}", "too long"))
        else:
            out.append(FilterVerdict(False))
    return out


class LanguageParams(Params):
    allowed: list[str] = Field(["en"], min_length=1)  # langdetect codes
    on: Literal["completion", "prompt"] = "completion"
    min_letters: int = Field(20, ge=1)  # below this, detection is a guess: the row is not judged
    min_probability: float = Field(0.5, ge=0, le=1)  # the allowed languages' share of the detection

    @model_validator(mode="after")
    def _known(self):
        from langdetect import detector_factory

        detector_factory.init_factory()
        known = set(detector_factory._factory.get_lang_list())  # the profiles the wheel ships
        unknown = [code for code in self.allowed if code not in known]
        if unknown:
            raise ValueError(f"unknown language codes {unknown}; known: {', '.join(sorted(known))}")
        return self


_STRIP = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`|\$\$.*?\$\$|\$[^$\n]*\$|\\\[.*?\\\]|\\\(.*?\\\)", re.DOTALL)


def detect(text: str, min_letters: int) -> list[tuple[str, float]] | None:
    """[(language, probability)] best first; None when too little prose is left to judge."""
    from langdetect import DetectorFactory, detect_langs
    from langdetect.lang_detect_exception import LangDetectException

    prose = _STRIP.sub(" ", text)
    if sum(ch.isalpha() for ch in prose) < min_letters:
        return None
    DetectorFactory.seed = 0  # langdetect samples at random; seeded, the same text gives the same answer
    try:
        return [(x.lang, x.prob) for x in detect_langs(prose)]
    except LangDetectException:
        return None


@FILTERS.register("language", params=LanguageParams, example="""
filters:
  - name: language
    allowed: [en]
    min_letters: 20
""")
def filter_language(rows: list[dict], params: LanguageParams, ctx: FilterContext) -> list[FilterVerdict]:
    """Completions not written in an allowed language (langdetect; code and maths are not judged)."""
    out = []
    for r in rows:
        found = detect((r["completion"] if params.on == "completion" else r["prompt_text"]) or "", params.min_letters)
        if found is None:
            out.append(FilterVerdict(False, "too little prose to judge"))
            continue
        share = sum(p for lang, p in found if lang in params.allowed)
        if share >= params.min_probability:
            out.append(FilterVerdict(False, f"{found[0][0]} ({found[0][1]:.2f})"))
        else:
            top, prob = found[0]
            out.append(FilterVerdict(True, f"detected {top} ({prob:.2f}), allowed: {', '.join(params.allowed)}", top))
    return out
