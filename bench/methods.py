"""Distillation methods side by side: sft, sft+dpo, kd and on-policy, each training the demo's
student for the same number of optimizer steps on the same run's data, then evaluated on the
same held-out prompts.

Every method is one `distill run` of the demo recipe (arithmetic word problems, SmolLM2-135M-
Instruct teaching itself) with `sampling.logprobs` set, so kd has the teacher's top-k, and with
no probes or gate. The runs share one name, so the first one samples and the others start from
its samples (their samples key is the same); the teacher's evaluation answers are linked from
the first run too, so every student is compared with the same teacher answers. Only `train:`
differs between the runs:

- sft: `trl_args.max_steps: STEPS` over the packed kept samples;
- sft+dpo: `preference.sft_steps: STEPS - DPO_STEPS`, then DPO for `DPO_STEPS` at its own
  learning rate (`preference.learning_rate: DPO_LR`; SFT's would undo the SFT phase);
- kd: `STEPS` steps of the top-k divergence mixed with cross-entropy (the recipe's kd defaults);
- on-policy: `STEPS` steps of TRL's GKD, the teacher loaded in the training process.

Printed: per method its held-out pass@1 and greedy accuracy with 95% bootstrap intervals over
the prompts, pass@k, the steps, the training seconds and tokens per second (real tokens the
steps fed, as the train summary counts them; sft+dpo's DPO phase), both against sft's, and
the whole run's wall time; the teacher (which is also the base) on top. A JSON of it all goes to OUT/methods.json.

With `--speed-steps N` (or `--speed-only`) each method then trains alone for N steps, with no
checkpoint and no evaluation, one after the other: seconds per step and tokens per second with
nothing else on the cores, against sft's. The main pass's train seconds include its
checkpoints and whatever else ran beside it.

    python bench/methods.py [--steps 32] [--dpo-steps 8] [--dpo-learning-rate 5e-6] [--methods sft,sft+dpo,kd,on-policy]
                            [--out bench-out/methods] [--speed-steps 8] [--speed-only]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "recipes" / "demo" / "smollm2-135m-from-smollm2-135m.yaml"
METHODS = ("sft", "sft+dpo", "kd", "on-policy")


def recipe_for(method: str, args, out: Path) -> Path:
    """The demo recipe with the teacher's top-k kept and `method` at the step budget."""
    data = yaml.safe_load(DEMO.read_text())
    data["name"] = "bench-methods"
    data["output_dir"] = str(out / "runs")
    data["tracking"] = {"wandb": "disabled"}
    data["sampling"]["logprobs"] = args.logprobs
    data["eval"].pop("probes", None)
    data.pop("gate", None)
    train = data["train"]
    train.pop("method", None)
    train.update(method=method, weights="full", save_steps=max(8, args.steps // 4),
                 trl_args={"max_steps": args.steps})
    if method == "sft+dpo":
        train["trl_args"] = {"max_steps": args.dpo_steps}
        train["preference"] = {"sft_steps": args.steps - args.dpo_steps, "learning_rate": args.dpo_learning_rate}
    path = out / "recipes" / f"{method.replace('+', '-')}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_dir_of(recipe: Path) -> Path:
    from distill.pipeline import open_run
    from distill.recipe import load_recipe

    return Path(open_run(load_recipe(recipe)).dir)


def share_teacher_answers(first: Path, run_dir: Path) -> None:
    """The first run's teacher evaluation, hard-linked: the same answers for every student."""
    for name in ("teacher.parquet", "teacher.timing.json"):
        source, target = first / "eval" / name, run_dir / "eval" / name
        if source.is_file() and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)


def run_method(method: str, recipe: Path, out: Path, until: str | None = None) -> float:
    """One `distill run`, its output in OUT/logs/METHOD.log; returns its wall seconds."""
    log = out / "logs" / f"{method.replace('+', '-')}{'-' + until if until else ''}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.time()
    with open(log, "w") as fh:
        proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", str(recipe),
                               *(["--until", until] if until else [])], stdout=fh, stderr=subprocess.STDOUT,
                              env={**os.environ, "DISTILL_PROGRESS_SECONDS": "60"})
    if proc.returncode:
        sys.exit(f"{method}: distill run failed (exit {proc.returncode}); see {log}")
    return time.time() - started


def scores(m: dict) -> dict:
    return {k: m[k] for k in ("pass@1", "pass@1_ci95", "greedy_accuracy", "greedy_accuracy_ci95", "pass@k")}


def collect(method: str, run_dir: Path, wall: float) -> dict:
    evaluation = json.loads((run_dir / "eval.json").read_text())
    train = json.loads((run_dir / "train" / "summary.json").read_text())
    steps, seconds = train["steps"], train["seconds"]
    if phase := train.get("sft_phase"):  # sft+dpo: both phases count
        steps += phase["steps"]
        seconds += phase["seconds"]
    return {"method": method, "run": run_dir.name, "steps": steps, "train_seconds": seconds,
            "tokens_per_second": train["tokens_per_second"], "wall_seconds": wall,
            "train_loss": train["train_loss"], "student": scores(evaluation["student"]),
            "teacher": scores(evaluation["teacher"]), "phases": _phases(train)}


def _phases(train: dict) -> list[dict]:
    """Each training phase's steps, seconds and tokens/s (two for sft+dpo)."""
    out = []
    if phase := train.get("sft_phase"):
        out.append({"phase": "sft", "steps": phase["steps"], "seconds": phase["seconds"]})
    out.append({"phase": train["method"].split("+")[-1], "steps": train["steps"], "seconds": train["seconds"],
                "tokens_per_second": train["tokens_per_second"]})
    return out


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def interval(ci) -> str:
    return f"{pct(ci[0])}-{pct(ci[1])}" if ci else "-"


def table(results: list[dict]) -> str:
    sft = next((r for r in results if r["method"] == "sft"), None)
    t = results[0]["teacher"]
    lines = ["| model | steps | pass@1 % (95% CI) | greedy % (95% CI) | pass@k % | train s | s/step vs sft "
             "| tokens/s | tokens/s vs sft | run wall s |",
             "|---|---|---|---|---|---|---|---|---|---|",
             f"| teacher = base | - | {pct(t['pass@1'])} ({interval(t['pass@1_ci95'])}) | {pct(t['greedy_accuracy'])} "
             f"({interval(t['greedy_accuracy_ci95'])}) | {pct(t['pass@k'])} | - | - | - | - | - |"]
    for r in results:
        s = r["student"]
        per_step = r["train_seconds"] / r["steps"]
        step_ratio = f"{per_step / (sft['train_seconds'] / sft['steps']):.2f}" if sft else "-"
        speed = f"{r['tokens_per_second'] / sft['tokens_per_second']:.2f}" if sft else "-"
        lines.append(f"| {r['method']} | {r['steps']} | {pct(s['pass@1'])} ({interval(s['pass@1_ci95'])}) | "
                     f"{pct(s['greedy_accuracy'])} ({interval(s['greedy_accuracy_ci95'])}) | {pct(s['pass@k'])} | "
                     f"{r['train_seconds']:.0f} | {step_ratio} | {r['tokens_per_second']:.0f} | {speed} | "
                     f"{r['wall_seconds']:.0f} |")
    return "\n".join(lines)


def speed_pass(methods: list[str], args, out: Path) -> list[dict]:
    """Each method trained alone for `--speed-steps` steps (no evaluation), one after the other:
    seconds per step and tokens per second with nothing else on the cores. sft+dpo splits the
    steps between its phases as the main pass does."""
    rows = []
    for method in methods:
        speed = argparse.Namespace(**{**vars(args), "steps": args.speed_steps,
                                      "dpo_steps": max(1, args.speed_steps * args.dpo_steps // args.steps)})
        recipe = recipe_for(method, speed, out / "speed")
        data = yaml.safe_load(recipe.read_text())
        data["name"] = "bench-methods"
        data["output_dir"] = str(out / "runs")  # beside the main pass's runs: their samples are reused
        data["train"]["save_steps"] = 10_000  # no checkpoint inside the timed steps
        recipe.write_text(yaml.safe_dump(data, sort_keys=False))
        run_dir = run_dir_of(recipe)
        if not (run_dir / "train" / "summary.json").is_file():
            run_method(f"speed-{method}", recipe, out, until="train")
        train = json.loads((run_dir / "train" / "summary.json").read_text())
        phases = _phases(train)
        steps = sum(p["steps"] for p in phases)
        seconds = sum(p["seconds"] for p in phases)
        rows.append({"method": method, "steps": steps, "seconds": seconds, "seconds_per_step": seconds / steps,
                     "tokens_per_second": train["tokens_per_second"]})
        print(f"speed {method}: {seconds / steps:.1f} s/step, {train['tokens_per_second']:.0f} tokens/s", flush=True)
    return rows


def speed_table(rows: list[dict]) -> str:
    sft = next((r for r in rows if r["method"] == "sft"), None)
    lines = ["| method | steps | s/step | s/step vs sft | tokens/s | tokens/s vs sft |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['seconds_per_step']:.1f} | "
                     f"{r['seconds_per_step'] / sft['seconds_per_step']:.2f} | {r['tokens_per_second']:.0f} | "
                     f"{r['tokens_per_second'] / sft['tokens_per_second']:.2f} |" if sft else
                     f"| {r['method']} | {r['steps']} | {r['seconds_per_step']:.1f} | - | {r['tokens_per_second']:.0f} | - |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=32, help="optimizer steps per method (sft's epoch on the demo)")
    ap.add_argument("--dpo-steps", type=int, default=8, help="of the steps, sft+dpo's DPO phase")
    ap.add_argument("--dpo-learning-rate", type=float, default=5e-6,
                    help="sft+dpo's DPO phase learning rate (the SFT phase keeps the recipe's)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--logprobs", type=int, default=8, help="the teacher's top-k kept for kd")
    ap.add_argument("--out", default="bench-out/methods")
    ap.add_argument("--speed-steps", type=int, default=0,
                    help="then train each method alone this many steps, for its speed with nothing beside it")
    ap.add_argument("--speed-only", action="store_true", help="only the speed pass")
    args = ap.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not 0 < args.dpo_steps < args.steps:
        sys.exit("--dpo-steps must be between 0 and --steps")
    out = Path(args.out).resolve()
    if args.speed_only:
        rows = speed_pass(methods, args, out)
        (out / "speed.json").write_text(json.dumps(rows, indent=1))
        print(speed_table(rows))
        return
    recipes = {m: recipe_for(m, args, out) for m in methods}
    results, first = [], None
    for method in methods:
        run_dir = run_dir_of(recipes[method])
        if first is not None:
            share_teacher_answers(first, run_dir)
        done = (run_dir / "eval.json").is_file() and (run_dir / "train" / "summary.json").is_file()
        wall = json.loads((run_dir / "bench-wall.json").read_text())["seconds"] if done else run_method(
            method, recipes[method], out)
        if not done:
            (run_dir / "bench-wall.json").write_text(json.dumps({"seconds": wall}))
        results.append(collect(method, run_dir, wall))
        first = first or run_dir
        print(f"{method}: pass@1 {pct(results[-1]['student']['pass@1'])}%, {wall:.0f} s", flush=True)
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "steps": args.steps,
              "dpo_steps": args.dpo_steps, "dpo_learning_rate": args.dpo_learning_rate, "logprobs": args.logprobs, "results": results}
    if args.speed_steps:
        report["speed"] = speed_pass(methods, args, out)
    (out / "methods.json").write_text(json.dumps(report, indent=1))
    print(table(results))
    if args.speed_steps:
        print(speed_table(report["speed"]))


if __name__ == "__main__":
    main()
