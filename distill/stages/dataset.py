"""Dataset: the kept samples as an SFT dataset in chat format, with a manifest and a card.

A sample is kept when it is not an error, every required verifier accepted it, no filter in
`drop` mode dropped it, and it is not an exact duplicate (same prompt, same completion) of a
sample kept before it. A filter's rewrite (PII redacted) is the text that is kept; the filters
that only marked a row are listed in its `flags` column.
Rows are in TRL's prompt-completion conversational format, so the trainer computes the
loss on the completion only. A conversation prompt keeps all its turns and its tools (a `tools`
column of JSON, which TRL passes to the student's chat template); the completion is the assistant
turn the teacher produced, its tool calls in OpenAI's structured form, so the student's own
template writes them in the format it will be served with.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

from distill.stages.prompts import skipped_rows

NAME = "dataset"
NEEDS_STUDENT = False


def run(ctx) -> dict:
    out = build_dataset(ctx.run)
    ctx.tracker.log({k: out[k] for k in ("rows", "samples", "prompts_with_a_kept_sample", "dropped")}, NAME)
    ctx.tracker.table("dataset/rows", _sample_rows(ctx.run.files.read_dataset()))
    return out


def _sample_rows(table, limit: int = 200) -> list[dict]:
    """A readable slice of the dataset for the tracker's table view."""
    rows = table.slice(0, limit).to_pylist()
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"][-1]["content"], "completion": r["completion"][0]["content"],
             "teacher": r["teacher_id"]} for r in rows]


def build_dataset(run) -> dict:
    """Writes dataset/train.parquet, dataset/manifest.json and dataset/README.md; returns the manifest."""
    files = run.files
    samples = files.read_samples().to_pylist()
    samples.sort(key=lambda s: (s["prompt_id"], s["sample_index"]))  # the same order on every machine
    filtered = files.read_decisions()  # None: no filter stage ran
    drops: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    rows = []
    for s in samples:
        if s["error"]:
            drops["error"] += 1
            continue
        if not s["accepted"]:
            drops["not accepted by the verifiers"] += 1
            continue
        flags: list[str] = []
        if filtered is not None:
            f = filtered.get(s["sample_id"])
            if f is None:
                raise RuntimeError(f"sample {s['sample_id']} has no filter decision: rerun the filter stage")
            if not f["kept"]:
                dropped_by = next(d["filter"] for d in f["decisions"] if d["action"] == "dropped")
                drops[f"filter {dropped_by}"] += 1
                continue
            s = {**s, "completion": f["completion"]}
            flags = [d["filter"] for d in f["decisions"] if d["action"] == "marked"]
        key = (s["prompt_id"], s["completion"].strip())
        if key in seen:
            drops["exact duplicate"] += 1
            continue
        seen.add(key)
        rows.append({
            "prompt": json.loads(s["messages"]),
            "completion": [assistant_turn(s["completion"], bool(s.get("tools")))],
            "tools": s.get("tools"),
            "sample_id": s["sample_id"],
            "prompt_id": s["prompt_id"],
            "prompt_source": s["prompt_source"],
            "prompt_licence": s["prompt_licence"],
            "teacher_id": s["teacher_id"],
            "teacher_licence": s["teacher_licence"],
            "flags": flags,
        })
    files.write_dataset(rows)
    manifest = {
        "run_id": run.id,
        "recipe_hash": run.recipe_hash,
        "code_version": run.code_version,
        "content_sha256": content_hash(rows),
        "rows": len(rows),
        "samples": len(samples),
        "prompts_with_a_kept_sample": len({r["prompt_id"] for r in rows}),
        "dropped": dict(sorted(drops.items())),
        "verifiers": _verifier_counts(samples),
        "filters": (files.read_json(files.filter_summary) or {}).get("filters", []),
        "teachers": _teachers(samples),
        "prompt_licences": dict(Counter(r["prompt_licence"] for r in rows)),
    }
    if tool_use := tool_use_summary(rows, samples, run.recipe):
        manifest["tool_use"] = tool_use
    if skipped := skipped_rows(run.recipe):  # bad prompt rows left out at load (prompts.bad_rows: skip)
        manifest["bad_prompt_rows_skipped"] = skipped
    files.write_json(files.manifest, manifest)
    files.write_text(files.dataset_card, dataset_card(run, manifest))
    return manifest


def assistant_turn(text: str, with_tools: bool) -> dict:
    """The teacher's answer as an assistant message: for a prompt with tools, the calls it makes
    as structured tool_calls and the rest of the text as content (None when nothing is left)."""
    if not with_tools:
        return {"role": "assistant", "content": text}
    from distill.verifiers.tool_call import CallError, parse_tool_calls

    try:
        calls = parse_tool_calls(text)
    except CallError:
        calls = []
    if not calls:
        return {"role": "assistant", "content": text}
    # Text beside Hermes tags is the turn's content; a JSON-form answer is all call.
    rest = re.sub(r"<tool_call>.*?</tool_call>", "", text, flags=re.DOTALL).strip() if "<tool_call>" in text else ""
    return {"role": "assistant", "content": rest or None,
            "tool_calls": [{"id": f"call_{i}", "type": "function",
                            "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}
                           for i, (name, args, _) in enumerate(calls)]}


def tool_use_summary(rows: list[dict], samples: list[dict], recipe) -> dict | None:
    """What the data teaches about tools: which tools the kept rows offer (and how many rows call
    each), how many rows answer with calls and how many with none, and the chat templates that
    write the calls (the teacher's, from its samples, and the student's); None without tools."""
    with_tools = [r for r in rows if r["tools"]]
    if not with_tools:
        return None
    offered, called = Counter(), Counter()
    for r in with_tools:
        offered.update({(t.get("function") or t).get("name", "?") for t in json.loads(r["tools"])})
        called.update({c["function"]["name"] for c in r["completion"][0].get("tool_calls") or []})
    kept = {r["sample_id"] for r in with_tools}
    teacher_templates = sorted({s["chat_template"] or "the model's own" for s in samples if s["sample_id"] in kept})
    return {
        "rows_with_tools": len(with_tools),
        "rows_with_calls": sum(bool(r["completion"][0].get("tool_calls")) for r in with_tools),
        "rows_without_a_call": sum(not r["completion"][0].get("tool_calls") for r in with_tools),
        "tools": {name: {"offered": n, "called": called.get(name, 0)} for name, n in sorted(offered.items())},
        "teacher_templates": teacher_templates,
        "student_template": recipe.student.template if recipe.student and recipe.student.template else "the base model's own",
        "call_format": "OpenAI tool_calls (function name, arguments as a JSON object); the student's chat template "
                       "writes them out",
    }


def tool_use_lines(tool_use: dict | None, heading: str) -> str:
    """The markdown section on tools and formats, shared by the dataset and model cards."""
    if not tool_use:
        return ""
    tools = "\n".join(f"| `{name}` | {t['offered']} | {t['called']} |" for name, t in tool_use["tools"].items())
    return f"""
## {heading}

{tool_use['rows_with_tools']} rows offer tools: {tool_use['rows_with_calls']} answer with tool calls,
{tool_use['rows_without_a_call']} with no call (no offered tool fits). Calls are stored as {tool_use['call_format']}.
Teacher's chat template: {', '.join(tool_use['teacher_templates'])}; student's: {tool_use['student_template']}.

| tool | rows offering it | rows calling it |
|---|---|---|
{tools}
"""


def content_hash(rows: list[dict]) -> str:
    """Of the training content alone (prompts and completions, in order): two runs that kept
    the same text have the same hash, whatever their ids or timestamps."""
    digest = hashlib.sha256()
    for r in rows:
        content = [r["prompt"], r["completion"]] + ([r["tools"]] if r.get("tools") else [])
        digest.update(json.dumps(content, sort_keys=True).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def _verifier_counts(samples: list[dict]) -> dict:
    counts: dict[str, Counter] = {}
    for s in samples:
        for v in s["verdicts"] or []:
            c = counts.setdefault(v["verifier"], Counter())
            c["cannot verify" if v["score"] is None else "passed" if v["passed"] else "failed"] += 1
    return {name: dict(c) for name, c in counts.items()}


def _teachers(samples: list[dict]) -> list[dict]:
    found = {(s["teacher_id"], s["teacher_model"], s["teacher_revision"], s["teacher_licence"]) for s in samples}
    return [{"id": i, "model": m, "revision": r, "licence": lic} for i, m, r, lic in sorted(found)]


def dataset_card(run, manifest: dict) -> str:
    """A Hugging Face dataset card written from the manifest alone."""
    from huggingface_hub import DatasetCard, DatasetCardData

    licences = sorted({t["licence"] for t in manifest["teachers"]} | set(manifest["prompt_licences"]))
    data = DatasetCardData(
        tags=["synthetic-data", "distillation", "distill"],
        task_categories=["text-generation"],
        size_categories=[_size_category(manifest["rows"])],
    )
    teacher_lines = "\n".join(
        f"| {t['id']} | {t['model']} | {t['revision']} | {t['licence']} |" for t in manifest["teachers"]
    )
    prompt_lines = "\n".join(f"| {lic} | {n} |" for lic, n in manifest["prompt_licences"].items())
    verifier_lines = "\n".join(
        f"| {name} | {c.get('passed', 0)} | {c.get('failed', 0)} | {c.get('cannot verify', 0)} |"
        for name, c in manifest["verifiers"].items()
    )
    dropped = ", ".join(f"{reason}: {n}" for reason, n in manifest["dropped"].items()) or "none"
    body = f"""
# {run.recipe.name}: distilled training data

Samples from the teacher(s) below that the verifiers accepted, one row per kept sample, in
the prompt-completion chat format. Made by distill {manifest['code_version']} from the
recipe with hash `{manifest['recipe_hash']}` (run `{manifest['run_id']}`).

- rows: {manifest['rows']} kept of {manifest['samples']} samples, covering {manifest['prompts_with_a_kept_sample']} prompts
- dropped: {dropped}
- content hash (sha256 of prompts and completions): `{manifest['content_sha256']}`

## Teachers

| id | model | revision | licence |
|---|---|---|---|
{teacher_lines}

## Prompt licences

| licence | rows |
|---|---|
{prompt_lines}

## Verifiers

| verifier | passed | failed | cannot verify |
|---|---|---|---|
{verifier_lines}

{tool_use_lines(manifest.get("tool_use"), "Tools and formats")}
## Filters

{_filter_lines(manifest["filters"])}

## Licence

Licences involved: {', '.join(licences) or 'none'}.
{_licence_text(run)}
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{body}").content


def _filter_lines(filters: list[dict]) -> str:
    if not filters:
        return "No filter ran."
    lines = ["| filter | mode | seen | flagged | dropped | marked | redacted | most flagged for |", "|---|---|---|---|---|---|---|---|"]
    for f in filters:
        top = ", ".join(f"{c} ({n})" for c, n in list(f["by_category"].items())[:3]) or "-"
        lines.append(f"| {f['filter']} | {f['mode']} | {f['seen']} | {f['flagged']} | {f['dropped']} | {f['marked']} "
                     f"| {f['redacted']} | {top} |")
    return "\n".join(lines)


def _licence_text(run) -> str:
    """What the licence engine decided for the run (licence.json), for the people who reuse the data."""
    d = run.files.read_json(run.files.licence)
    if d is None:
        return "No licence decision is recorded for this run: check each source's terms before you publish."
    lines = [f"The licence engine's decision for this run: **{d['verdict']}**."]
    if d["non_commercial"]:
        lines.append("Non-commercial use only.")
    if d["obligations"]:
        lines.append("\nObligations that travel with this data and what is trained on it:\n")
        lines += [f"- {o['what']} ({o['citation']})" for o in d["obligations"]]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return label
    return "n>1M"
