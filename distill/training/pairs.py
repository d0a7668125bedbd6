"""Preference data from the run's own samples, for dpo, sft+dpo and kto.

Per prompt, a chosen answer is a sample the verifiers accepted and the filters kept (a row of
dataset/train.parquet, with the filters' text); a rejected answer is a sample of the same prompt
that the verifiers failed (not accepted, not an error; exact repeats of a failed text count
once). `train.pairs.rule` matches them:

- `hardest`: each chosen answer with the failed sample the verifiers scored highest, the nearest
  miss (a sample's score: the mean of its verdicts' scores, "cannot verify" counted as 0; ties go
  to the lower sample index);
- `random`: each chosen answer with a failed sample drawn at random;
- `all`: every chosen x failed pair.

A prompt keeps at most `max_per_prompt` pairs, a seeded draw of its candidates. Every draw uses
its own generator, seeded by `pairs.seed` and the prompt id, so a prompt's pairs do not depend
on the other prompts. A prompt without a kept sample, or without a failed one, has no pairs and
is counted as such.

The pairs are in TRL's conversational preference format (prompt turns, chosen turn, rejected
turn, and the prompt's tools as JSON), with the sample ids of both sides: the record of what
the student learned from. KTO takes them unpaired: each distinct sample of a prompt's pairs is
one row, its completion labelled good (chosen) or bad (rejected), the rows in a seeded shuffled
order, because KTO reads them in order and estimates its KL term from a batch's other rows.

The rejected side's text is the sample's own: the filters only judge accepted samples.
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from distill import storage
from distill.schema import MESSAGE

# The assistant turn of a completion text, for a prompt with tools or without: the same function
# the dataset stage writes its completions with, so both sides of a pair are written alike.
Turn = Callable[[str, bool], dict]

PAIRS_SCHEMA = pa.schema([
    ("prompt", pa.list_(MESSAGE)),
    ("chosen", pa.list_(MESSAGE)),
    ("rejected", pa.list_(MESSAGE)),
    ("tools", pa.string()),  # JSON: the tool definitions the prompt offers; null: none
    ("prompt_id", pa.string()),
    ("chosen_sample_id", pa.string()),
    ("rejected_sample_id", pa.string()),
])

UNPAIRED_SCHEMA = pa.schema([
    ("prompt", pa.list_(MESSAGE)),
    ("completion", pa.list_(MESSAGE)),
    ("label", pa.bool_()),  # true: a chosen (accepted and kept) sample; false: a failed one
    ("tools", pa.string()),
    ("prompt_id", pa.string()),
    ("sample_id", pa.string()),
])

# What pairing reads of each sample.
SAMPLE_COLUMNS = ["sample_id", "prompt_id", "sample_index", "completion", "tools", "error", "accepted", "verdicts"]


def score(sample: dict) -> float:
    """How near a failed sample came: the mean of its verdicts' scores, None counted as 0."""
    verdicts = sample.get("verdicts") or []
    return sum(v["score"] or 0.0 for v in verdicts) / len(verdicts) if verdicts else 0.0


def select(samples: list[dict], kept: list[dict], rule: str, max_per_prompt: int,
           seed: int) -> tuple[list[tuple[dict, dict, dict]], dict]:
    """The pairs as (kept dataset row, chosen sample, rejected sample), by prompt id then
    sample index, and the counts: prompts with pairs, pairs, and the prompts skipped for having
    no failed sample or no kept one."""
    kept_by_id = {r["sample_id"]: r for r in kept}
    by_prompt: dict[str, list[dict]] = defaultdict(list)
    for s in samples:
        by_prompt[s["prompt_id"]].append(s)
    pairs: list[tuple[dict, dict, dict]] = []
    counts = {"prompts_with_pairs": 0, "pairs": 0, "prompts_without_failed": 0, "prompts_without_kept": 0}
    for prompt_id in sorted(by_prompt):
        group = sorted(by_prompt[prompt_id], key=lambda s: s["sample_index"])
        chosen = [s for s in group if s["sample_id"] in kept_by_id]
        failed, seen = [], set()
        for s in group:
            if not s["accepted"] and not s["error"] and (text := (s["completion"] or "").strip()) not in seen:
                seen.add(text)
                failed.append(s)
        if not chosen:
            counts["prompts_without_kept"] += 1
            continue
        if not failed:
            counts["prompts_without_failed"] += 1
            continue
        rng = random.Random(f"{seed}/{prompt_id}")
        if rule == "hardest":
            nearest = max(failed, key=lambda s: (score(s), -s["sample_index"]))
            candidates = [(c, nearest) for c in chosen]
        elif rule == "random":
            candidates = [(c, rng.choice(failed)) for c in chosen]
        elif rule == "all":
            candidates = [(c, f) for c in chosen for f in failed]
        else:
            raise ValueError(f"unknown pairs rule {rule!r}: hardest, random or all")
        if len(candidates) > max_per_prompt:
            candidates = [candidates[i] for i in sorted(rng.sample(range(len(candidates)), max_per_prompt))]
        pairs += [(kept_by_id[c["sample_id"]], c, f) for c, f in candidates]
        counts["prompts_with_pairs"] += 1
        counts["pairs"] += len(candidates)
    return pairs, counts


def preference_rows(samples: list[dict], kept: list[dict], rule: str, max_per_prompt: int, seed: int,
                    turn: Turn) -> tuple[list[dict], dict]:
    """DPO's rows ({prompt, chosen, rejected, tools, prompt_id, chosen_sample_id,
    rejected_sample_id}) and the counts. `kept` are dataset rows; `samples` every sample."""
    pairs, counts = select(samples, kept, rule, max_per_prompt, seed)
    rows = [{
        "prompt": row["prompt"],
        "chosen": row["completion"],
        "rejected": [turn(rejected["completion"], bool(row["tools"]))],
        "tools": row["tools"],
        "prompt_id": row["prompt_id"],
        "chosen_sample_id": chosen["sample_id"],
        "rejected_sample_id": rejected["sample_id"],
    } for row, chosen, rejected in pairs]
    return rows, counts


def unpaired_rows(samples: list[dict], kept: list[dict], rule: str, max_per_prompt: int, seed: int,
                  turn: Turn) -> tuple[list[dict], dict]:
    """KTO's rows ({prompt, completion, label, tools, prompt_id, sample_id}): each distinct sample
    of the pairs once, shuffled with `seed`; the counts add rows and how many of each label."""
    pairs, counts = select(samples, kept, rule, max_per_prompt, seed)
    rows, seen = [], set()
    for row, chosen, rejected in pairs:
        for sample, good in ((chosen, True), (rejected, False)):
            if sample["sample_id"] in seen:
                continue
            seen.add(sample["sample_id"])
            rows.append({
                "prompt": row["prompt"],
                "completion": row["completion"] if good else [turn(sample["completion"], bool(row["tools"]))],
                "label": good,
                "tools": row["tools"],
                "prompt_id": row["prompt_id"],
                "sample_id": sample["sample_id"],
            })
    random.Random(seed).shuffle(rows)
    desirable = sum(r["label"] for r in rows)
    counts.update(rows=len(rows), desirable=desirable, undesirable=len(rows) - desirable)
    return rows, counts


def write_pairs(run, turn: Turn, unpaired: bool = False) -> dict:
    """Builds the run's preference data from its samples and dataset and writes
    dataset/pairs.parquet (or dataset/unpaired.parquet for KTO); returns the rule and the counts."""
    files = run.files
    p = run.recipe.train.pairs
    samples = files.read_samples(SAMPLE_COLUMNS).to_pylist()
    kept = files.read_dataset().to_pylist()
    build, path, schema = ((unpaired_rows, files.unpaired, UNPAIRED_SCHEMA) if unpaired
                           else (preference_rows, files.pairs, PAIRS_SCHEMA))
    rows, counts = build(samples, kept, p.rule, p.max_per_prompt, p.seed, turn)
    storage.write_parquet(path, pa.Table.from_pylist(rows, schema=schema))
    return {"rule": p.rule, "max_per_prompt": p.max_per_prompt, "seed": p.seed, **counts,
            "samples_sha256": samples_digest(rows)}


def samples_digest(rows: list[dict]) -> str:
    """A digest of which samples the rows hold, on which side: the lineage of a preference-trained
    student (the same samples paired alike give the same digest, whatever the row order)."""
    import hashlib

    keys = sorted("|".join(str(r.get(k)) for k in ("chosen_sample_id", "rejected_sample_id", "sample_id", "label")
                           if k in r) for r in rows)
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def read_pairs(path) -> pa.Table:
    """The pairs or unpaired rows a `write_pairs` wrote."""
    return pq.read_table(path)


def training_columns(table: pa.Table, unpaired: bool) -> list[str]:
    """The columns TRL's trainer reads: the turns, the label for KTO, and tools when any row has them."""
    columns = ["prompt", "completion", "label"] if unpaired else ["prompt", "chosen", "rejected"]
    if table["tools"].null_count < table.num_rows:
        columns.append("tools")
    return columns


def describe(counts: dict) -> str:
    """One line on what pairing found, for an error when there is nothing to train on."""
    return (f"{counts['prompts_without_kept']} prompts have no accepted sample that the filters kept and "
            f"{counts['prompts_without_failed']} have no failed sample")

