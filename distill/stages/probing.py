"""The recipe's probes (eval.probes) inside the evaluate stage: their requests, their answers
and their scores for the teacher, the student's base and the student.

Probe requests ride with a model's evaluation requests, so each model's engine starts once
for both. Every request gets the run's sampling settings and a seed of its own (the same for
every model); its answer is written to eval/probes/<role>.parquet, and a rerun asks only for
the answers missing there. A probe whose data cannot be had (a package not installed) is
reported with the reason and measures nothing; items left out for want of a checker's data are
counted as skipped, never scored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from distill.lineage import sample_seed
from distill.probes import PROBES, Probe, ProbeItem, Ratio, summarise
from distill.stages.requests import sampling_params

PROBE = "probe|"  # work id prefix of probe requests: probe|<label>|<item id>|<request index>
ROLES = ("teacher", "base", "student")


@dataclass
class Loaded:
    spec: object  # distill.recipe.schema.ProbeSpec
    probe: Probe | None
    items: list[ProbeItem] = field(default_factory=list)
    total: int = 0
    skipped: list[dict] = field(default_factory=list)
    source: str = ""
    licence: str = ""
    error: str | None = None  # set: the probe could not be loaded, and why


def load_probes(recipe, specs=None) -> list[Loaded]:
    """Each probe's items, drawn with its limit and seed (`specs`: some of the recipe's probes)."""
    out = []
    for spec in recipe.eval.probes if specs is None else specs:
        probe = PROBES.get(spec.name).fn
        try:
            got = probe.load(spec.params, spec.limit, spec.seed)
        except ValueError as e:  # its data is not installed: skipped with the reason, never counted
            out.append(Loaded(spec, probe, error=str(e)))
            continue
        out.append(Loaded(spec, probe, got.items, got.total, got.skipped, got.source, got.licence))
    return out


def is_probe(work_id: str) -> bool:
    return work_id.startswith(PROBE)


def plan(recipe, loaded: list[Loaded]) -> list[dict]:
    """Every probe request as a backend request row."""
    work = []
    for p in loaded:
        default_tokens = p.spec.max_tokens or p.probe.max_tokens or recipe.sampling.max_tokens
        for item in p.items:
            for j, req in enumerate(item.requests):
                params = sampling_params(recipe, sample_seed(recipe.sampling.seed, item.id, j))
                params["max_tokens"] = p.spec.max_tokens or req.get("max_tokens") or default_tokens
                row = {"work_id": f"{PROBE}{p.spec.key}|{item.id}|{j}", "messages": req["messages"],
                       "sampling_params": params}
                if req.get("tools"):
                    row["tools"] = req["tools"]
                work.append(row)
    return work


def saved_for(files, role: str, model) -> pa.Table | None:
    """The role's saved probe answers if they are this model's (same weights), else None."""
    table = files.read_probe_answers(role)
    if table is None or set(table["model_revision"].to_pylist()) != {model.revision}:
        return None
    return table


def missing(run, role: str, model, loaded: list[Loaded]) -> list[dict]:
    """The probe requests whose answers by this model are not saved yet."""
    work = plan(run.recipe, loaded)
    saved = saved_for(run.files, role, model)
    done = set(saved["work_id"].to_pylist()) if saved is not None else set()
    return [w for w in work if w["work_id"] not in done]


def write_answers(run, role: str, model, work: list[dict], results: list[dict]) -> pa.Table:
    """Adds this model's answers to probe requests to eval/probes/<role>.parquet."""
    seeds = {w["work_id"]: w["sampling_params"]["seed"] for w in work}
    rows = []
    for r in results:
        label, item, index = r["work_id"][len(PROBE):].rsplit("|", 2)
        rows.append({"role": role, "model_id": model.id, "model_revision": model.revision, "probe": label,
                     "item_id": item, "request_index": int(index), "work_id": r["work_id"],
                     "seed": seeds[r["work_id"]], "completion": r["text"], "finish_reason": r["finish_reason"],
                     "completion_tokens": r["completion_tokens"], "error": r["error"] or None})
    saved = saved_for(run.files, role, model)
    if saved is not None:
        fresh = {r["work_id"] for r in rows}
        rows = [r for r in saved.to_pylist() if r["work_id"] not in fresh] + rows
    rows.sort(key=lambda r: (r["probe"], r["item_id"], r["request_index"]))
    return run.files.write_probe_answers(role, rows)


def per_item(p: Loaded, table: pa.Table | None, judge=None) -> list[dict[str, Ratio]] | None:
    """The probe's scores per item from a model's answers; None when some answer is missing.
    A probe whose params name a `judge` is scored by that model, `judge(model id)` serving it."""
    if table is None:
        return None
    answers: dict[tuple[str, int], str | None] = {}
    for r in table.to_pylist():
        if r["probe"] == p.spec.key:
            answers[(r["item_id"], r["request_index"])] = None if r["error"] else r["completion"]
    aligned = []
    for item in p.items:
        keys = [(item.id, j) for j in range(len(item.requests))]
        if any(k not in answers for k in keys):
            return None
        aligned.append([answers[k] for k in keys])
    judge_id = getattr(p.spec.params, "judge", None)
    if judge_id:
        if judge is None:
            raise RuntimeError(f"probe {p.spec.key!r} is judged by {judge_id!r}: it needs a model backend, which "
                               "`distill run` provides")
        return p.probe.judged(p.items, aligned, p.spec.params, lambda prompts: ask(judge(judge_id), prompts))
    return p.probe.score(p.items, aligned, p.spec.params)


def ask(backend, prompts: list[str], max_tokens: int = 16) -> list[str | None]:
    """A judge model's greedy answers to prompts (None where its request failed)."""
    work = [{"work_id": str(i), "messages": [{"role": "user", "content": text}],
             "sampling_params": {"temperature": 0.0, "top_p": 1.0, "max_tokens": max_tokens, "seed": 0}}
            for i, text in enumerate(prompts)]
    got: dict[int, str | None] = {}
    for batch in backend.generate(work):
        for r in batch:
            got[int(r["work_id"])] = None if r.get("error") else r["text"]
    return [got.get(i) for i in range(len(prompts))]


def results(loaded: list[Loaded], tables: dict[str, pa.Table | None], judge=None) -> dict:
    """eval.json's `probes`: per probe, where its data came from, how many items it asked and
    skipped, and per metric each model's value with its 95% interval and the student's change
    from its base and from the teacher."""
    out = {}
    for p in loaded:
        entry = {"probe": p.spec.name, "source": p.source, "licence": p.licence, "total": p.total,
                 "items": len(p.items), "skipped": len(p.skipped), "skipped_reasons": _reasons(p.skipped),
                 "limit": p.spec.limit, "seed": p.spec.seed, "metrics": {}}
        if p.error:
            entry["error"] = p.error
            out[p.spec.key] = entry
            continue
        if getattr(p.spec.params, "judge", None):
            entry["judged_by"] = p.spec.params.judge
        scored = {role: per_item(p, tables.get(role), judge) for role in ROLES}
        summaries = {role: summarise(p.probe, scores) for role, scores in scored.items() if scores is not None}
        for metric, better in p.probe.metrics.items():
            row = {"better": better}
            for role, summary in summaries.items():
                row[role] = summary[metric]
            value = {role: row[role]["value"] for role in ROLES if role in row}
            for other in ("base", "teacher"):
                if value.get("student") is not None and value.get(other) is not None:
                    row[f"student_minus_{other}"] = value["student"] - value[other]
            entry["metrics"][metric] = row
        out[p.spec.key] = entry
    return out


def _reasons(skipped: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    return counts
