"""Training tokens/s of the train stage on a CPU with TRL's fused LM head projecting only the
labelled (completion) positions, against TRL's own CPU choice of projecting every position:
the same data, model and settings, one process per side; only `completion_rows_only_head`
differs (the baseline side swaps it for a no-op). Losses are printed so that a reader sees
both sides trained the same.

The demo's data are the interesting case (short completions after a ~50-token chat prompt):

    python bench/cpu_fused_head.py --dataset runs/demo-arithmetic/<run-id>/dataset/train.parquet

Without --dataset: synthetic rows as in bench/sft_throughput.py (long completions, short prompts).
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

from sft_throughput import data_parser, write_run
from sides import emit, run_side


def side(recipe_path: str, compact: bool) -> dict:
    import distill.stages.train as train
    from distill.pipeline import open_run
    from distill.recipe import load_recipe

    if not compact:
        train.completion_rows_only_head = contextlib.nullcontext
    run = open_run(load_recipe(recipe_path))
    s = train.train_student(run)
    return {"tokens": s["trained_tokens"], "seconds": s["seconds"], "steps": s["steps"],
            "loss": s["train_loss"]}


def main() -> None:
    ap = data_parser(__doc__, max_length=256, packed_batch=4)
    ap.add_argument("--side", choices=["every-position", "labelled-only"], help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        emit(side(args.recipe, compact=args.side == "labelled-only"))
        return

    results = {}
    for name in ("every-position", "labelled-only"):
        with tempfile.TemporaryDirectory() as tmp:  # a fresh run each: the stage would reuse a trained student
            recipe = write_run(Path(tmp), args)
            results[name] = run_side(__file__, name, "--recipe", str(recipe))
    source = args.dataset or f"{args.rows} synthetic rows"
    print(f"data: {source}; model: {args.model}; packed rows of {args.max_length} tokens, {args.packed_batch} per step")
    for name, r in results.items():
        print(f"{name:>15}: {r['tokens']:.0f} tokens in {r['seconds']:.1f} s, {r['steps']} steps = "
              f"{r['tokens'] / r['seconds']:.0f} tokens/s, train loss {r['loss']:.4f}")
    b, d = results["every-position"], results["labelled-only"]
    print(f"ratio (labelled-only / every-position): {(d['tokens'] / d['seconds']) / (b['tokens'] / b['seconds']):.2f}")


if __name__ == "__main__":
    main()
