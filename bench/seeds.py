"""The spread of the demo's headline: its student trained with several training seeds on the same
dataset, each evaluated on the same held-out prompts against the same teacher answers.

Every seed is one `distill run` of the demo recipe with only `train.seed` changed (seed 0 is the
demo itself: the same run id, so a demo already run in OUT is reused). The runs share the
demo's name, so all of them start from the first one's samples and dataset; the teacher's
evaluation answers are linked from the first run. What varies is the training data order and
the trainer's own randomness, and with them the student's sampled evaluation answers.

Printed: per seed the student's held-out pass@1 and greedy accuracy (95% bootstrap intervals
over the prompts), then the spread across seeds: min, max, mean and standard deviation, and
the range to state the headline with.

    python bench/seeds.py [--seeds 0,1,2] [--out bench-out/seeds]
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime, timezone
from pathlib import Path

import yaml
from methods import DEMO, interval, pct, run_dir_of, run_method, share_teacher_answers


def recipe_for(seed: int, out: Path) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    data["output_dir"] = str(out / "runs")
    data["tracking"] = {"wandb": "disabled"}
    if seed:
        data["train"]["seed"] = seed
    path = out / "recipes" / f"seed-{seed}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", default="bench-out/seeds")
    args = ap.parse_args()
    out = Path(args.out).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    rows, first = [], None
    for seed in seeds:
        recipe = recipe_for(seed, out)
        run_dir = run_dir_of(recipe)
        if first is not None:
            share_teacher_answers(first, run_dir)
        if not (run_dir / "eval.json").is_file():
            run_method(f"seed-{seed}", recipe, out)
        evaluation = json.loads((run_dir / "eval.json").read_text())
        train = json.loads((run_dir / "train" / "summary.json").read_text())
        rows.append({"seed": seed, "run": run_dir.name, "dataset_digest": train["dataset_digest"],
                     **{k: evaluation["student"][k] for k in ("pass@1", "pass@1_ci95", "greedy_accuracy",
                                                               "greedy_accuracy_ci95")},
                     "teacher_pass@1": evaluation["teacher"]["pass@1"]})
        first = first or run_dir
        print(f"seed {seed}: pass@1 {pct(rows[-1]['pass@1'])}%", flush=True)
    if len({r["dataset_digest"] for r in rows}) != 1:
        print("warning: the runs trained on different datasets; the spread mixes data and seeds")
    p1 = [r["pass@1"] for r in rows]
    greedy = [r["greedy_accuracy"] for r in rows]
    spread = {name: {"min": min(v), "max": max(v), "mean": statistics.fmean(v),
                     "stdev": statistics.stdev(v) if len(v) > 1 else 0.0} for name, v in
              (("pass@1", p1), ("greedy_accuracy", greedy))}
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "seeds": rows, "spread": spread}
    (out / "seeds.json").write_text(json.dumps(report, indent=1))
    print("| train.seed | pass@1 % (95% CI) | greedy % (95% CI) |")
    print("|---|---|---|")
    for r in rows:
        print(f"| {r['seed']} | {pct(r['pass@1'])} ({interval(r['pass@1_ci95'])}) | "
              f"{pct(r['greedy_accuracy'])} ({interval(r['greedy_accuracy_ci95'])}) |")
    for name, s in spread.items():
        print(f"{name}: {pct(s['min'])}-{pct(s['max'])}% across {len(rows)} seeds "
              f"(mean {pct(s['mean'])}%, sd {pct(s['stdev'])} points)")
    print(f"teacher pass@1: {pct(rows[0]['teacher_pass@1'])}%")


if __name__ == "__main__":
    main()
