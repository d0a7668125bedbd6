"""Prompts: read every source of both splits, give each prompt its id, keep eval held out."""

from __future__ import annotations

from distill.prompts import load_prompts

NAME = "prompts"
NEEDS_STUDENT = False


def run(ctx) -> dict[str, int]:
    out = build_prompts(ctx.run)
    ctx.tracker.log(out, NAME)
    return out


def build_prompts(run) -> dict[str, int]:
    """Writes prompts/train.parquet and prompts/eval.parquet; returns counts.

    A train prompt whose id is also an eval prompt is removed from train: held-out
    prompts must never be trained on.
    """
    recipe = run.recipe
    eval_rows = load_prompts(recipe.prompts.eval, "eval")
    eval_ids = {r["prompt_id"] for r in eval_rows}
    train_all = load_prompts(recipe.prompts.train, "train")
    train_rows = [r for r in train_all if r["prompt_id"] not in eval_ids]
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        run.files.write_prompts(split, rows)
    out = {"train": len(train_rows), "eval": len(eval_rows), "train_overlapping_eval": len(train_all) - len(train_rows)}
    if skipped := skipped_rows(recipe):  # prompts.bad_rows: skip
        out["bad_rows_skipped"] = skipped
    return out


def skipped_rows(recipe) -> int:
    """Bad prompt rows left out under `prompts.bad_rows: skip`, over every source."""
    return sum(getattr(c.params, "skipped_rows", 0) for c in recipe.prompts.train + recipe.prompts.eval)
