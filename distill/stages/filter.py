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

import pyarrow as pa
import pyarrow.compute as pc

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.lineage import digest
from distill.schema import DECISION

NAME = "filter"
NEEDS_STUDENT = False

# What a filter function sees of each sample.
ROW_FIELDS = ("sample_id", "prompt_id", "prompt_text", "completion", "finish_reason", "completion_tokens",
              "prompt_source", "prompt_licence", "teacher_id")
DECISION_FIELDS = tuple(f.name for f in DECISION)  # filter, flagged, action, reason, category


def run(ctx) -> dict:
    out = filter_samples(ctx.run, ctx.served_by_id, ctx.progress_factory)
    ctx.tracker.log({"candidates": out["candidates"], "kept": out["kept"],
                     "filters": {f["filter"]: {k: f[k] for k in ("seen", "flagged", "dropped", "marked", "redacted")}
                                 for f in out["filters"]}}, NAME)
    return out


def candidates(files) -> list[dict]:
    """The samples filters judge: no error and accepted by every required verifier, in a stable
    order. Read a batch at a time; only these become Python rows."""
    found = []
    for batch in files.iter_samples(list(ROW_FIELDS) + ["sample_index", "accepted", "error"]):
        no_error = pc.fill_null(pc.equal(batch["error"], ""), True)
        found.append(batch.filter(pc.and_(pc.fill_null(batch["accepted"], False), no_error)))
    if not found:
        return []
    table = pa.Table.from_batches(found).sort_by([("prompt_id", "ascending"), ("sample_index", "ascending")])
    # Every candidate is held at once, and these repeat (a prompt's n samples, one teacher): one
    # string for each distinct value, not one per row, halves what the rows take.
    distinct: dict[str, dict] = {c: {} for c in ("prompt_id", "prompt_text", "finish_reason", "prompt_source",
                                                  "prompt_licence", "teacher_id")}
    rows = []
    for batch in table.select(list(ROW_FIELDS)).to_batches(max_chunksize=16_384):
        for r in batch.to_pylist():
            for column, seen in distinct.items():
                r[column] = seen.setdefault(r[column], r[column])
            rows.append(r)
    return rows


def filter_samples(run, backend_for=None, progress_factory=None) -> dict:
    """Runs the recipe's filters; writes filters/decisions.parquet and filters/summary.json.
    `progress_factory(label)` makes a bar per filter, which the filter may advance row by row."""
    files = run.files
    files.compact_samples()  # sampling is done: its many batch-sized parts become a few large ones
    rows = candidates(files)
    key = digest(sorted(r["sample_id"] for r in rows))
    if files.filter_summary.is_file() and files.decisions.is_file():
        done = files.read_json(files.filter_summary)
        if done.get("input_digest") == key:  # the same samples went through the same filters
            return done
    eval_prompts = files.read_prompts("eval")
    # Per row, each filter's (filter, flagged, action, reason, category): tuples, not dicts, since
    # every candidate is held at once, and one tuple for every row a filter passed without a word.
    decisions: dict[str, list[tuple]] = {r["sample_id"]: [] for r in rows}
    alive = rows  # read for this call alone: a redaction may rewrite them in place
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
        passed = (spec.name, False, "passed", "", "")
        for row, v in zip(alive, verdicts):
            action = _action(v, spec.mode)
            counts[action] += 1
            if v.flagged:
                categories[v.category or "flagged"] += 1
            if action == "redacted":
                row["completion"] = v.completion
            decision = (spec.name, v.flagged, action, v.reason, v.category)
            decisions[row["sample_id"]].append(passed if decision == passed else decision)
            if action != "dropped":
                survivors.append(row)
        stats.append({"filter": spec.name, "mode": spec.mode, "seen": len(alive), "flagged": sum(categories.values()),
                      **{a: counts[a] for a in ("dropped", "marked", "redacted")},
                      "by_category": dict(categories.most_common())})
        alive = survivors
    final = {r["sample_id"]: r["completion"] for r in alive}
    files.write_decisions({"sample_id": sid, "kept": sid in final, "completion": final.get(sid),
                           "decisions": [dict(zip(DECISION_FIELDS, d)) for d in ds]} for sid, ds in decisions.items())
    summary = {"input_digest": key, "candidates": len(rows), "kept": len(alive), "filters": stats}
    files.write_json(files.filter_summary, summary)
    return summary


def _action(v: FilterVerdict, mode: str) -> str:
    if not v.flagged:
        return "passed"
    if v.completion is not None:
        return "redacted"
    return "dropped" if mode == "drop" else "marked"
