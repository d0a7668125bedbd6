"""Filter: the recipe's filters, in order, over the samples the verifiers accepted.

Each filter sees the rows that survived the filters before it. A flagged row is dropped or
only marked, as the recipe's `mode` says; a filter that rewrites a row (PII redaction) keeps it
with the new text. Every decision is recorded per sample in `filters/decisions.parquet`
(sample id, the final completion, kept or not, and each filter's verdict with its reason), and
the counts in `filters/summary.json`, so filtered and unfiltered data can be compared and every
drop traced to its reason.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distill import storage
from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.lineage import digest
from distill.stages.sample import read_samples

DECISION = pa.struct([
    ("filter", pa.string()),
    ("flagged", pa.bool_()),
    ("action", pa.string()),  # passed | dropped | marked | redacted
    ("reason", pa.string()),
    ("category", pa.string()),
])
DECISIONS_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("kept", pa.bool_()),
    ("completion", pa.string()),  # the text that goes on: redacted where a filter rewrote it
    ("decisions", pa.list_(DECISION)),
])
# What a filter function sees of each sample.
ROW_FIELDS = ("sample_id", "prompt_id", "prompt_text", "completion", "finish_reason", "completion_tokens",
              "prompt_source", "prompt_licence", "teacher_id")


def candidates(run_dir: Path) -> list[dict]:
    """The samples filters judge: no error and accepted by every required verifier, in a stable order."""
    table = read_samples(run_dir, list(ROW_FIELDS) + ["sample_index", "accepted", "error"])
    rows = [r for r in table.to_pylist() if r["accepted"] and not r["error"]]
    rows.sort(key=lambda r: (r["prompt_id"], r["sample_index"]))
    return [{k: r[k] for k in ROW_FIELDS} for r in rows]


def filter_samples(run, backend_for=None, progress_factory=None) -> dict:
    """Runs the recipe's filters; writes filters/decisions.parquet and filters/summary.json.
    `progress_factory(label)` makes a bar per filter, which the filter may advance row by row."""
    from distill.stages.prompts import read_prompts

    rows = candidates(run.dir)
    out = run.dir / "filters"
    key = digest(sorted(r["sample_id"] for r in rows))
    summary_file = out / "summary.json"
    if summary_file.is_file() and (out / "decisions.parquet").is_file():
        done = json.loads(summary_file.read_text())
        if done.get("input_digest") == key:  # the same samples went through the same filters
            return done
    eval_prompts = read_prompts(run.dir, "eval")
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
    table = pa.Table.from_pylist([
        {"sample_id": sid, "kept": sid in final, "completion": final.get(sid), "decisions": d}
        for sid, d in decisions.items()
    ], schema=DECISIONS_SCHEMA)
    storage.write_parquet(out / "decisions.parquet", table)
    summary = {"input_digest": key, "candidates": len(rows), "kept": len(alive), "filters": stats}
    storage.write_json(summary_file, summary)
    return summary


def _action(v: FilterVerdict, mode: str) -> str:
    if not v.flagged:
        return "passed"
    if v.completion is not None:
        return "redacted"
    return "dropped" if mode == "drop" else "marked"


def read_decisions(run_dir: Path) -> dict[str, dict] | None:
    """sample_id -> {kept, completion, decisions}; None when the filter stage has not run."""
    f = run_dir / "filters" / "decisions.parquet"
    if not f.is_file():
        return None
    return {r["sample_id"]: r for r in pq.read_table(f, schema=DECISIONS_SCHEMA).to_pylist()}


def read_filter_summary(run_dir: Path) -> dict | None:
    f = run_dir / "filters" / "summary.json"
    return json.loads(f.read_text()) if f.is_file() else None
