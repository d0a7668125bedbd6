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

The samples are read in (prompt id, sample index) order as a stream, and the rows written as
they are made: memory does not grow with the run (distill/run.py, `iter_samples_in_order`).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter

from distill.stages.prompts import skipped_rows

NAME = "dataset"
NEEDS_STUDENT = False


# What the dataset stage reads of each sample.
COLUMNS = ["sample_id", "prompt_id", "sample_index", "error", "accepted", "completion", "messages", "tools",
           "prompt_source", "prompt_licence", "teacher_id", "teacher_model", "teacher_revision", "teacher_licence",
           "chat_template", "verdicts"]


def run(ctx) -> dict:
    out = build_dataset(ctx.run)
    ctx.tracker.log({k: out[k] for k in ("rows", "samples", "prompts_with_a_kept_sample", "dropped")}, NAME)
    ctx.tracker.table("dataset/rows", _sample_rows(ctx.run.files.read_dataset(limit=200)))
    return out


def _sample_rows(table) -> list[dict]:
    """A readable slice of the dataset for the tracker's table view."""
    rows = table.to_pylist()
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"][-1]["content"], "completion": r["completion"][0]["content"],
             "teacher": r["teacher_id"]} for r in rows]


def build_dataset(run) -> dict:
    """Writes dataset/train.parquet, dataset/manifest.json and dataset/README.md; returns the manifest."""
    files = run.files
    files.compact_samples()  # after a filter stage, already done
    tally = _Tally()
    files.write_dataset(_kept_rows(files.iter_samples_in_order(COLUMNS), files.iter_decisions(), tally))
    manifest = {
        "run_id": run.id,
        "recipe_hash": run.recipe_hash,
        "code_version": run.code_version,
        "content_sha256": tally.content.hexdigest(),
        "rows": tally.rows,
        "samples": tally.samples,
        "prompts_with_a_kept_sample": tally.prompts,
        "dropped": dict(sorted(tally.drops.items())),
        "verifiers": {name: dict(c) for name, c in tally.verifiers.items()},
        "filters": (files.read_json(files.filter_summary) or {}).get("filters", []),
        "teachers": [{"id": i, "model": m, "revision": r, "licence": lic} for i, m, r, lic in sorted(tally.teachers)],
        "prompt_licences": dict(tally.prompt_licences),
    }
    if tool_use := tool_use_summary(tally, run.recipe):
        manifest["tool_use"] = tool_use
    if skipped := skipped_rows(run.recipe):  # bad prompt rows left out at load (prompts.bad_rows: skip)
        manifest["bad_prompt_rows_skipped"] = skipped
    files.write_json(files.manifest, manifest)
    files.write_text(files.dataset_card, dataset_card(run, manifest))
    return manifest


class _Tally:
    """What the manifest says of the samples and the kept rows, counted as they stream by."""

    def __init__(self):
        self.samples = self.rows = self.prompts = 0
        self.drops: Counter = Counter()
        self.verifiers: dict[str, Counter] = {}
        self.teachers: set[tuple] = set()
        self.prompt_licences: Counter = Counter()
        self.content = hashlib.sha256()  # of the kept rows, in order (_hash_row)
        self.last_prompt: str | None = None
        # Rows offering tools: the tools offered and called, the rows with calls, the teacher's templates.
        self.with_tools = self.with_calls = 0
        self.offered: Counter = Counter()
        self.called: Counter = Counter()
        self.teacher_templates: set[str] = set()

    def sample(self, s: dict) -> None:
        self.samples += 1
        self.teachers.add((s["teacher_id"], s["teacher_model"], s["teacher_revision"], s["teacher_licence"]))
        for v in s["verdicts"] or []:
            c = self.verifiers.setdefault(v["verifier"], Counter())
            c["cannot verify" if v["score"] is None else "passed" if v["passed"] else "failed"] += 1

    def kept(self, row: dict, s: dict) -> None:
        self.rows += 1
        if row["prompt_id"] != self.last_prompt:  # rows come by prompt
            self.prompts += 1
            self.last_prompt = row["prompt_id"]
        self.prompt_licences[row["prompt_licence"]] += 1
        _hash_row(self.content, row)
        if row["tools"]:
            calls = row["completion"][0].get("tool_calls") or []
            self.with_tools += 1
            self.with_calls += bool(calls)
            self.offered.update({(t.get("function") or t).get("name", "?") for t in json.loads(row["tools"])})
            self.called.update({c["function"]["name"] for c in calls})
            self.teacher_templates.add(s["chat_template"] or "the model's own")


def _kept_rows(samples, decisions, tally: _Tally):
    """The dataset rows of the samples (in prompt id, sample index order), counting as they go.
    `decisions` are the filter stage's, one per candidate in the same order; None: no filter ran."""
    seen: set[str] = set()  # the kept completions of the current prompt
    prompt = None
    for s in samples:
        tally.sample(s)
        if s["error"]:
            tally.drops["error"] += 1
            continue
        if not s["accepted"]:
            tally.drops["not accepted by the verifiers"] += 1
            continue
        flags: list[str] = []
        if decisions is not None:
            f = next(decisions, None)
            if f is None or f["sample_id"] != s["sample_id"]:
                raise RuntimeError(f"sample {s['sample_id']} has no filter decision: rerun the filter stage")
            if not f["kept"]:
                dropped_by = next(d["filter"] for d in f["decisions"] if d["action"] == "dropped")
                tally.drops[f"filter {dropped_by}"] += 1
                continue
            s = {**s, "completion": f["completion"]}
            flags = [d["filter"] for d in f["decisions"] if d["action"] == "marked"]
        if s["prompt_id"] != prompt:
            seen, prompt = set(), s["prompt_id"]
        if (text := s["completion"].strip()) in seen:
            tally.drops["exact duplicate"] += 1
            continue
        seen.add(text)
        row = {
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
        }
        tally.kept(row, s)
        yield row


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


def tool_use_summary(tally: _Tally, recipe) -> dict | None:
    """What the data teaches about tools: which tools the kept rows offer (and how many rows call
    each), how many rows answer with calls and how many with none, and the chat templates that
    write the calls (the teacher's, from its samples, and the student's); None without tools."""
    if not tally.with_tools:
        return None
    return {
        "rows_with_tools": tally.with_tools,
        "rows_with_calls": tally.with_calls,
        "rows_without_a_call": tally.with_tools - tally.with_calls,
        "tools": {name: {"offered": n, "called": tally.called.get(name, 0)}
                  for name, n in sorted(tally.offered.items())},
        "teacher_templates": sorted(tally.teacher_templates),
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


def _hash_row(digest, r: dict) -> None:
    """Adds a row to the content hash: of the training content alone (prompts and completions, in
    order), so two runs that kept the same text have the same hash, whatever their ids or timestamps."""
    content = [r["prompt"], r["completion"]] + ([r["tools"]] if r.get("tools") else [])
    digest.update(json.dumps(content, sort_keys=True).encode())
    digest.update(b"\n")


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
