"""Filter: the recipe's filters, in order, over the samples the verifiers accepted.

Each filter sees the rows that survived the filters before it. A flagged row is dropped or
only marked, as the recipe's `mode` says; a filter that rewrites a row (PII redaction) keeps it
with the new text. Every decision is recorded per sample in `filters/decisions.parquet`
(sample id, the final completion, kept or not, and each filter's verdict with its reason), and
the counts in `filters/summary.json`, so filtered and unfiltered data can be compared and every
drop traced to its reason.
"""

from __future__ import annotations

from collections import Counter

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.lineage import digest

NAME = "filter"
NEEDS_STUDENT = False

# What a filter function sees of each sample.
ROW_FIELDS = ("sample_id", "prompt_id", "prompt_text", "completion", "finish_reason", "completion_tokens",
              "prompt_source", "prompt_licence", "teacher_id")


def run(ctx) -> dict:
    out = filter_samples(ctx.run, ctx.served_by_id, ctx.progress_factory)
    ctx.tracker.log({"candidates": out["candidates"], "kept": out["kept"],
                     "filters": {f["filter"]: {k: f[k] for k in ("seen", "flagged", "dropped", "marked", "redacted")}
                                 for f in out["filters"]}}, NAME)
    return out


def candidates(files) -> list[dict]:
    """The samples filters judge: no error and accepted by every required verifier, in a stable order."""
    table = files.read_samples(list(ROW_FIELDS) + ["sample_index", "accepted", "error"])
    rows = [r for r in table.to_pylist() if r["accepted"] and not r["error"]]
    rows.sort(key=lambda r: (r["prompt_id"], r["sample_index"]))
    return [{k: r[k] for k in ROW_FIELDS} for r in rows]


def filter_samples(run, backend_for=None, progress_factory=None) -> dict:
    """Runs the recipe's filters; writes filters/decisions.parquet and filters/summary.json.
    `progress_factory(label)` makes a bar per filter, which the filter may advance row by row."""
    files = run.files
    rows = candidates(files)
    key = digest(sorted(r["sample_id"] for r in rows))
    if files.filter_summary.is_file() and files.decisions.is_file():
        done = files.read_json(files.filter_summary)
        if done.get("input_digest") == key:  # the same samples went through the same filters
            return done
    eval_prompts = files.read_prompts("eval")
    decisions: dict[str, list[dict]] = {r["sample_id"]: [] for r in rows}
    alive = [dict(r) for r in rows]
    stats = []
    for spec in run.recipe.filters:
        ctx = FilterContext(base_dir=run.recipe.base_dir, eval_prompts=eval_prompts, backend_for=backend_for,
                            progress=progress_factory(f"filter {spec.name}") if progress_factory else None)
        verdicts: list[FilterVerdict] = FILTERS.get(spec.name).fn(alive, spec.params, ctx)
        if len(verdicts) != len(alive):
            raise RuntimeError(f"filter {spec.name!r} returned {len(verdicts)} verdicts for {len(alive)} rows")
        counts: Counter = Counter()
        categories: Counter = Counter()
        survivors = []
        for row, v in zip(alive, verdicts):
            action = _action(v, spec.mode)
            counts[action] += 1
            if v.flagged:
                categories[v.category or "flagged"] += 1
            if action == "redacted":
                row["completion"] = v.completion
            decisions[row["sample_id"]].append({"filter": spec.name, "flagged": v.flagged, "action": action,
                                                "reason": v.reason, "category": v.category})
            if action != "dropped":
                survivors.append(row)
        stats.append({"filter": spec.name, "mode": spec.mode, "seen": len(alive), "flagged": sum(categories.values()),
                      **{a: counts[a] for a in ("dropped", "marked", "redacted")},
                      "by_category": dict(categories.most_common())})
        alive = survivors
    final = {r["sample_id"]: r["completion"] for r in alive}
    files.write_decisions([{"sample_id": sid, "kept": sid in final, "completion": final.get(sid), "decisions": d}
                           for sid, d in decisions.items()])
    summary = {"input_digest": key, "candidates": len(rows), "kept": len(alive), "filters": stats}
    files.write_json(files.filter_summary, summary)
    return summary


def _action(v: FilterVerdict, mode: str) -> str:
    if not v.flagged:
        return "passed"
    if v.completion is not None:
        return "redacted"
    return "dropped" if mode == "drop" else "marked"
