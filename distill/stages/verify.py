"""Verify: run the recipe's verifiers over a batch of completions; keep every verdict.

Most verifiers are plain functions of the text. A verifier that runs a model (the LLM judge)
cannot run while the teacher's engine streams its batches, so the sample stage calls
`verify_batch(..., with_models=False)` per batch and `add_model_verdicts` once the batch of
work is generated; a sample is not accepted while a required verdict is missing.
"""

from __future__ import annotations

import json
from typing import Callable

from distill.verifiers import VERIFIERS, Verdict, VerifyContext


def verify_batch(verifiers: list, completions: list[str | None], references: list[str | None], *,
                 questions: list[str | None] | None = None, finish_reasons: list[str | None] | None = None,
                 tools: list[list[dict] | None] | None = None, backend_for: Callable | None = None,
                 with_models: bool = True) -> list[list[dict]]:
    """One list of verdict dicts per completion; error rows (completion None) get none.

    with_models=False skips the verifiers that run a model; `add_model_verdicts` adds them later.
    """
    live = [i for i, c in enumerate(completions) if c is not None]
    out: list[list[dict]] = [[] for _ in completions]
    ctx = VerifyContext(
        questions=[questions[i] if questions else None for i in live],
        finish_reasons=[finish_reasons[i] if finish_reasons else None for i in live],
        tools=[tools[i] if tools else None for i in live],
        backend_for=backend_for,
    )
    for spec in verifiers:
        entry = VERIFIERS.get(spec.name)
        if entry.uses_model and not with_models:
            continue
        verdicts: list[Verdict] = entry.fn([completions[i] for i in live], [references[i] for i in live],
                                           spec.params, ctx)
        if len(verdicts) != len(live):
            raise RuntimeError(f"verifier {spec.name!r} returned {len(verdicts)} verdicts for {len(live)} completions")
        for i, v in zip(live, verdicts):
            if not isinstance(v, Verdict):  # a plug-in's slip, said plainly rather than as an AttributeError later
                raise TypeError(f"verifier {spec.name!r} returned a {type(v).__name__}, not a Verdict")
            out[i].append(_verdict_dict(spec, v))
    return out


def _verdict_dict(spec, v: Verdict) -> dict:
    score = None if v.score is None else float(v.score)
    return {"verifier": spec.name, "score": score, "reason": v.reason, "required": spec.required,
            "passed": score is not None and score >= spec.threshold}


def model_verifiers(verifiers: list) -> list:
    return [v for v in verifiers if VERIFIERS.get(v.name).uses_model]


def add_model_verdicts(verifiers: list, rows: list[dict], backend_for: Callable) -> bool:
    """Adds the verdicts of model-running verifiers that `rows` lack (rows: sample dicts with
    completion, reference, prompt_text, finish_reason, verdicts, error); recomputes `accepted`.
    Returns whether anything changed."""
    changed = False
    for spec in model_verifiers(verifiers):
        todo = [r for r in rows if r["completion"] is not None
                and not any(v["verifier"] == spec.name for v in r["verdicts"] or [])]
        if not todo:
            continue
        got = verify_batch([spec], [r["completion"] for r in todo], [r["reference"] for r in todo],
                           questions=[r["prompt_text"] for r in todo],
                           finish_reasons=[r["finish_reason"] for r in todo],
                           tools=[json.loads(r["tools"]) if r.get("tools") else None for r in todo],
                           backend_for=backend_for)
        for row, verdicts in zip(todo, got):
            row["verdicts"] = list(row["verdicts"] or []) + verdicts
        changed = True
    if changed:
        for row in rows:
            row["accepted"] = accepted(row["verdicts"], row["error"], verifiers)
    return changed


def accepted(verdicts: list[dict], error: str | None, verifiers: list | None = None) -> bool:
    """Every required verifier passed. A required verdict of None (cannot verify) is not a pass,
    and neither is one still missing (a model verifier not yet run), when `verifiers` is given."""
    if error:
        return False
    if verifiers is not None:
        have = {v["verifier"] for v in verdicts or []}
        if any(spec.required and spec.name not in have for spec in verifiers):
            return False
    return all(v["passed"] for v in verdicts or [] if v["required"])
