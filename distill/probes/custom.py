"""custom: a probe of the recipe's own making, any prompt source judged by any verifiers.

For a skill no shipped probe measures (a house style, a domain's arithmetic, a company's tools):
the prompts come from a prompt source written exactly as in the recipe's `prompts` lists, and
the answers are judged by verifiers written as in its `verifiers` list, each passing an answer
at or above its `threshold` (1.0 unless set):

    probes:
      - name: custom
        source: {source: jsonl, path: data/held_out.jsonl, answer_field: answer, licence: cc-by-4.0}
        verifiers:
          - name: final-number
            tolerance: 0.01

Both are checked when the parameters are (names against the registries, parameters against each
component's own), with file paths relative to the recipe. Prompts with the same id (the same
question, or the same conversation and tools) are one item.

Metric: accuracy, the share of answers every verifier passes. An answer one verifier fails is
wrong whatever the others say; an answer no verifier fails but one cannot judge (its verdict is
None: no reference, nothing it can read) is not counted, neither right nor wrong, as the
verifiers' own None is never taken for a score. A failed request is wrong.

Verifiers that run a model (an LLM judge) are not supported in probes yet: they are left out of
the scoring, with a warning; a list of only such verifiers is refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator

from distill.probes import HIGHER, Probe, ProbeItem, ProbeSet, Ratio, item_id, register, subset, user
from distill.registry import Params

log = logging.getLogger(__name__)

SOURCE_KEY = "source"  # the key naming the prompt source, as in a recipe's prompts list
VERIFIER_KEYS = ("name", "threshold")  # a verifier's keys that are not its own parameters


def _messages(error: ValidationError, params: type[Params], allowed: tuple[str, ...]) -> str:
    from distill.problems import problems_from

    return "; ".join(f"{p.key}: {p.message}" for p in problems_from(error, params, (), allowed))


def _base_dir(context: Any) -> Path:
    return Path((context or {}).get("base_dir", "."))


def resolve_source(spec: dict, base_dir: Path) -> tuple[str, Params]:
    """The prompt source a spec names and its validated parameters; raises ValueError saying what is wrong."""
    from distill.prompts import PROMPT_SOURCES

    name = spec.get(SOURCE_KEY)
    if not isinstance(name, str):
        raise ValueError(f"needs a `{SOURCE_KEY}` key naming a prompt source (jsonl, parquet, hf-disk, ...), "
                         "then that source's own keys, as in the recipe's prompts lists")
    if name not in PROMPT_SOURCES:
        raise ValueError(PROMPT_SOURCES.unknown(name))
    entry = PROMPT_SOURCES.get(name)
    own = {k: v for k, v in spec.items() if k != SOURCE_KEY}
    try:
        return name, entry.params.model_validate(own, context={"base_dir": base_dir})
    except ValidationError as e:
        raise ValueError(f"prompt source {name!r}: {_messages(e, entry.params, (SOURCE_KEY,))}") from None


def resolve_verifier(spec: Any, base_dir: Path) -> tuple[str, Params, float]:
    """(name, validated parameters, threshold) of one verifier spec; raises ValueError saying what is wrong."""
    from distill.verifiers import VERIFIERS

    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise ValueError("each verifier is a mapping with a `name` (a registered verifier), its own keys and "
                         "optionally a `threshold`")
    name = spec["name"]
    if name not in VERIFIERS:
        raise ValueError(VERIFIERS.unknown(name))
    threshold = spec.get("threshold", 1.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
        raise ValueError(f"verifier {name!r}: threshold {threshold!r} is not a number from 0 to 1")
    entry = VERIFIERS.get(name)
    own = {k: v for k, v in spec.items() if k not in VERIFIER_KEYS}
    try:
        return name, entry.params.model_validate(own, context={"base_dir": base_dir}), float(threshold)
    except ValidationError as e:
        raise ValueError(f"verifier {name!r}: {_messages(e, entry.params, VERIFIER_KEYS)}") from None


class CustomParams(Params):
    # A prompt source as in the recipe's prompts lists: {source: jsonl, path: ..., licence: ...}.
    source: dict[str, Any]
    # Verifiers as in the recipe's verifiers list: {name: ..., its own keys, threshold (1.0)}.
    verifiers: list[dict[str, Any]] = Field(min_length=1)
    _source: tuple[str, Params] | None = PrivateAttr(default=None)
    _verifiers: list[tuple[str, Params, float]] = PrivateAttr(default_factory=list)

    @field_validator("source")
    @classmethod
    def _check_source(cls, v: dict, info: ValidationInfo) -> dict:
        resolve_source(v, _base_dir(info.context))
        return v

    @field_validator("verifiers")
    @classmethod
    def _check_verifiers(cls, v: list, info: ValidationInfo) -> list:
        from distill.verifiers import VERIFIERS

        problems = []
        for i, spec in enumerate(v):
            try:
                resolve_verifier(spec, _base_dir(info.context))
            except ValueError as e:
                problems.append(f"[{i}]: {e}")
        if problems:
            raise ValueError("; ".join(problems))
        if all(VERIFIERS.get(spec["name"]).uses_model for spec in v):
            raise ValueError("every verifier listed runs a model, which probes do not support yet: "
                             "add one that does not (final-number, match, code, tool-call, ...)")
        return v

    def model_post_init(self, context: Any) -> None:
        # Checked above; resolved once more here, where the parameters can be kept.
        base = _base_dir(context)
        self._source = resolve_source(self.source, base)
        self._verifiers = [resolve_verifier(spec, base) for spec in self.verifiers]

    @property
    def source_params(self) -> tuple[str, Params]:
        """The prompt source's name and its parameters."""
        assert self._source is not None
        return self._source

    @property
    def checks(self) -> list[tuple[str, Params, float]]:
        """Each verifier's name, parameters and threshold."""
        return self._verifiers


@register("custom", params=CustomParams)
class CustomProbe(Probe):
    """Any prompt source, judged by the verifiers the recipe names (model-running ones not yet)."""

    metrics = {"accuracy": HIGHER}

    def load(self, params: CustomParams, limit: int | None, seed: int) -> ProbeSet:
        from distill.prompts import PROMPT_SOURCES, FileParams, prompt_row

        name, source = params.source_params
        where = name + (f":{source.path}" if isinstance(source, FileParams) else "")
        items, seen = [], set()
        for i, row in enumerate(PROMPT_SOURCES.get(name).fn(source)):
            stored = prompt_row(row, f"{where}: row {i}")
            if stored["prompt_id"] in seen:  # the same prompt twice is one item, as in a run's prompts
                continue
            seen.add(stored["prompt_id"])
            tools = json.loads(stored["tools"]) if stored["tools"] else None
            if stored["messages"] is None:
                request = user(stored["question"])
            else:
                request = {"messages": json.loads(stored["messages"]), **({"tools": tools} if tools else {})}
            items.append(ProbeItem(item_id("custom", stored["prompt_id"]), [request], {
                "prompt_id": stored["prompt_id"], "question": stored["question"], "reference": stored["reference"],
                "tools": tools}))
        return ProbeSet(subset(items, limit, seed), total=len(items), source=where,
                        licence=getattr(source, "licence", ""))

    def score(self, items: list[ProbeItem], answers: list[list[str | None]],
              params: CustomParams) -> list[dict[str, Ratio]]:
        from distill.verifiers import VERIFIERS, VerifyContext

        out: list[dict[str, Ratio]] = [{"accuracy": Ratio(0, 1)} for _ in items]  # a failed request is wrong
        answered = [i for i, answer in enumerate(answers) if answer[0] is not None]
        if not answered:
            return out
        chosen = [items[i] for i in answered]
        completions = [answers[i][0] for i in answered]
        references = [item.data["reference"] for item in chosen]
        ctx = VerifyContext(questions=[item.data["question"] for item in chosen], finish_reasons=[None] * len(chosen),
                            tools=[item.data["tools"] for item in chosen])
        failed = [False] * len(chosen)
        unjudged = [False] * len(chosen)
        for name, verifier_params, threshold in params.checks:
            entry = VERIFIERS.get(name)
            if entry.uses_model:
                log.warning("custom probe: verifier %r runs a model, which probes do not support yet; left out", name)
                continue
            for k, verdict in enumerate(entry.fn(completions, references, verifier_params, ctx)):
                if verdict.score is None:
                    unjudged[k] = True
                elif verdict.score < threshold:
                    failed[k] = True
        for k, i in enumerate(answered):
            # One failure decides; otherwise an answer some verifier could not judge is not counted.
            out[i] = {"accuracy": Ratio(0, 1) if failed[k] else Ratio(0, 0) if unjudged[k] else Ratio(1, 1)}
        return out
