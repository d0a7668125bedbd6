"""Prompts: read every source of both splits, give each prompt its id, keep eval held out."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distill import storage
from distill.prompts import load_prompts


def build_prompts(recipe, run_dir: Path) -> dict[str, int]:
    """Writes prompts/train.parquet and prompts/eval.parquet; returns counts.

    A train prompt whose id is also an eval prompt is removed from train: held-out
    prompts must never be trained on.
    """
    eval_rows = load_prompts(recipe.prompts.eval, "eval")
    eval_ids = {r["prompt_id"] for r in eval_rows}
    train_all = load_prompts(recipe.prompts.train, "train")
    train_rows = [r for r in train_all if r["prompt_id"] not in eval_ids]
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        storage.write_parquet(run_dir / "prompts" / f"{split}.parquet", pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA))
    return {"train": len(train_rows), "eval": len(eval_rows), "train_overlapping_eval": len(train_all) - len(train_rows)}


def read_prompts(run_dir: Path, split: str) -> list[dict]:
    return pq.read_table(run_dir / "prompts" / f"{split}.parquet").to_pylist()


PROMPT_SCHEMA = pa.schema([
    ("prompt_id", pa.string()),
    ("split", pa.string()),
    ("question", pa.string()),
    ("reference", pa.string()),
    ("source", pa.string()),
    ("source_licence", pa.string()),
])
