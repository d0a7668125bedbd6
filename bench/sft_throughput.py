"""Training tokens/s of distill's train stage (packed, padding-free rows) against TRL's plain
padded batches: same data, same model, same optimizer settings, one process per side.

The data are prompt-completion chat rows whose completion lengths spread the way reasoning
traces do (a few short, many medium, a long tail), or a run's own dataset with --dataset.
Both sides see about the same number of tokens per optimizer step: the padded side takes
batches of rows, the packed side rows of --max-length tokens; both train in the precision the
train stage picks (bf16 autocast where the CPU has it). Tokens counted are real ones
(prompt + completion, no padding), over the wall time of `trainer.train()`.

    python bench/sft_throughput.py [--rows 64] [--model smollm2-135m-instruct|tiny] [--dataset PATH]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml
from sides import emit, run_side

WORDS = "so we add the two numbers then carry one and check the sum again before we answer".split()


def synthetic_rows(n: int, seed: int) -> list[dict]:
    """Completions of 10 to ~700 words, log-normally spread (median ~90): like verified traces."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 999), rng.randint(1, 999)
        length = min(700, max(10, int(rng.lognormvariate(4.5, 0.8))))
        steps = " ".join(rng.choice(WORDS) for _ in range(length))
        rows.append({
            "prompt": [{"role": "user", "content": f"What is {a} + {b}?"}],
            "completion": [{"role": "assistant", "content": f"{steps}. The answer is {a + b}."}],
        })
    return rows


def write_run(tmp: Path, args) -> Path:
    """A recipe and a dataset in a run directory, as the dataset stage would leave them."""
    import pyarrow.parquet as pq

    from distill.pipeline import open_run
    from distill.recipe import load_recipe
    from distill.schema import DATASET_SCHEMA

    base = args.model if args.model != "tiny" else str(tiny_model(tmp))
    recipe = {
        "name": "bench-sft",
        "teacher": "smollm2-135m-instruct",
        "prompts": {"train": [{"source": "arithmetic", "count": 1}]},
        "student": {"name": "bench-student", "base": base},
        "train": {"epochs": 1, "batch_size": args.packed_batch, "max_length": args.max_length, "packing": True,
                  "learning_rate": 1e-5, "save_steps": 1_000_000},
        "tracking": {"wandb": "disabled"},
        "output_dir": str(tmp / "runs"),
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    run = open_run(load_recipe(tmp / "recipe.yaml"))
    if args.dataset:
        table = pq.read_table(args.dataset).select(["prompt", "completion"])
        rows = table.to_pylist()[: args.rows]
    else:
        rows = synthetic_rows(args.rows, seed=0)
    full = [{**r, **{k: "bench" for k in DATASET_SCHEMA.names if k not in r}} for r in rows]
    run.files.write_dataset(full)
    return tmp / "recipe.yaml"


def tiny_model(tmp: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from support.models import build_tiny_model

    target = tmp / "tiny-model"
    return target if (target / "config.json").is_file() else build_tiny_model(target)


def distill_side(recipe_path: str, without: str | None = None) -> dict:
    """The train stage on the recipe's run; `without` names one of the fit's context managers
    (distill.training.cpu) to swap for a no-op, for a benchmark of that one change."""
    import contextlib

    import distill.stages.train as train
    import distill.training.sft as sft
    from distill.pipeline import open_run
    from distill.recipe import load_recipe

    if without:
        setattr(sft, without, contextlib.nullcontext)
    run = open_run(load_recipe(recipe_path))
    s = train.train_student(run)
    return {"tokens": s["trained_tokens"], "seconds": s["seconds"], "steps": s["steps"], "loss": s["train_loss"]}


def one_change(doc: str, change: str, sides: tuple[str, str]) -> None:
    """The main() of a benchmark of one change to the train stage: sides[0] runs it with the
    context manager `change` swapped for a no-op, sides[1] as it is; one process and a fresh
    run each (the stage would reuse a trained student)."""
    ap = data_parser(doc, max_length=256, packed_batch=4)
    ap.add_argument("--side", choices=sides, help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        emit(distill_side(args.recipe, without=change if args.side == sides[0] else None))
        return

    results = {}
    for name in sides:
        with tempfile.TemporaryDirectory() as tmp:
            recipe = write_run(Path(tmp), args)
            results[name] = run_side(sys.argv[0], name, "--recipe", str(recipe))
    source = args.dataset or f"{args.rows} synthetic rows"
    print(f"data: {source}; model: {args.model}; packed rows of {args.max_length} tokens, {args.packed_batch} per step")
    width = max(map(len, sides))
    for name, r in results.items():
        print(f"{name:>{width}}: {r['tokens']:.0f} tokens in {r['seconds']:.1f} s, {r['steps']} steps = "
              f"{r['tokens'] / r['seconds']:.0f} tokens/s, train loss {r['loss']:.4f}")
    b, d = (results[name] for name in sides)
    print(f"ratio ({sides[1]} / {sides[0]}): {(d['tokens'] / d['seconds']) / (b['tokens'] / b['seconds']):.2f}")


def baseline_side(recipe_path: str, batch_size: int) -> dict:
    """TRL as its docs show it: prompt-completion rows, padded batches, no packing."""
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from distill.pipeline import open_run
    from distill.recipe import load_recipe
    from distill.hardware import cpu_has_bf16

    run = open_run(load_recipe(recipe_path))
    t = run.recipe.train
    base = run.recipe.student_base
    data = datasets.Dataset(run.files.read_dataset().select(["prompt", "completion"]))
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base.path, dtype=torch.float32),
        args=SFTConfig(output_dir=str(run.dir / "baseline"), num_train_epochs=1, learning_rate=t.learning_rate,
                       per_device_train_batch_size=batch_size, max_length=t.max_length, packing=False,
                       padding_free=False, seed=t.seed, save_strategy="no", report_to=[], use_cpu=True,
                       bf16=cpu_has_bf16(),  # the precision the train stage picks: the ratio is packing's alone
                       disable_tqdm=True, logging_steps=10, lr_scheduler_type="cosine", warmup_steps=0.03),
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(base.path),
    )
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    started = time.time()
    trainer.train()
    return {"tokens": tokens, "seconds": time.time() - started, "steps": trainer.state.global_step}


def data_parser(doc: str, max_length: int, packed_batch: int) -> argparse.ArgumentParser:
    """The arguments of a training benchmark's workload: `write_run` reads them."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a teacher id, a model directory, or 'tiny'")
    ap.add_argument("--dataset", help="a dataset/train.parquet from a run, instead of synthetic rows")
    ap.add_argument("--max-length", type=int, default=max_length)
    ap.add_argument("--packed-batch", type=int, default=packed_batch, help="packed rows of --max-length tokens per step")
    return ap


def main() -> None:
    ap = data_parser(__doc__, max_length=1024, packed_batch=2)
    ap.add_argument("--padded-batch", type=int, default=16, help="rows per step on the padded side")
    ap.add_argument("--side", choices=["distill", "baseline"], help=argparse.SUPPRESS)
    ap.add_argument("--recipe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        emit(distill_side(args.recipe) if args.side == "distill" else baseline_side(args.recipe, args.padded_batch))
        return

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        recipe = write_run(Path(tmp), args)
        for side in ("baseline", "distill"):
            results[side] = run_side(__file__, side, "--recipe", str(recipe), "--padded-batch", str(args.padded_batch))
    b, d = results["baseline"], results["distill"]
    b_tps, d_tps = b["tokens"] / b["seconds"], d["tokens"] / d["seconds"]
    source = args.dataset or f"{args.rows} synthetic rows (log-normal completion lengths)"
    print(f"data: {source}; model: {args.model}; max_length {args.max_length}")
    print(f"TRL padded batches of {args.padded_batch} rows : {b['tokens']} tokens in {b['seconds']:.1f} s, "
          f"{b['steps']} steps = {b_tps:.0f} tokens/s")
    print(f"distill packed, padding-free ({args.packed_batch} x {args.max_length}) : {d['tokens']} tokens in "
          f"{d['seconds']:.1f} s, {d['steps']} steps = {d_tps:.0f} tokens/s")
    print(f"ratio (distill / padded): {d_tps / b_tps:.2f}   target >= 1.5")


if __name__ == "__main__":
    main()
