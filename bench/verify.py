"""Verification throughput on Ray tasks with 1 and with 2 workers, and a run with pathological
completions mixed in.

The workload is the `math` verifier (math_verify and sympy: the costliest of the plain-text
verifiers) over synthetic answers in LaTeX, a third of them wrong, in batches of 64 as the sample
stage hands them over. Each side starts its own local Ray with two CPUs and verifies through the
sample stage's own pool (distill.stages.verify.VerifyPool) with `workers` tasks of one CPU each;
a warm-up batch per worker first, so the worker processes' imports are not timed.

The pathological side mixes in answers whose verification cannot finish (a tower of exponents
for sympy) at one per 100 and runs with 2 workers. None of them may be accepted, and the whole
run must take no longer than the clean run plus, per worker, its share of them times math's
hard limit (3 x timeout + 1 s). In the worker process math_verify's own timeouts work (they need
the main thread) and usually stop such an answer first, as a failed comparison; the hard limit's
kill is the backstop for what no signal stops (tests/verifiers/test_math.py shows it).

    python bench/verify.py [--completions 2048] [--timeout 2]
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import datetime, timezone

import yaml

TOWER = r"\boxed{9^{9^{9^{9^{9}}}}}"


def completions(n: int, seed: int, pathological_every: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if pathological_every and i % pathological_every == pathological_every // 2:
            out.append((f"So the answer is {TOWER}.", "5"))
            continue
        a, b, c = rng.randint(1, 40), rng.randint(2, 40), rng.randint(1, 9)
        value = f"\\frac{{{a}}}{{{b}}} + \\sqrt{{{c}}}"
        right = f"\\frac{{{a * 2}}}{{{b * 2}}} + \\sqrt{{{c}}}"  # the same value, written another way
        wrong = f"\\frac{{{a + 1}}}{{{b}}} + \\sqrt{{{c}}}"
        out.append((f"We simplify step by step. So the answer is $\\boxed{{{right if i % 3 else wrong}}}$.", value))
    return out


def spec(timeout: int, tmp) -> list:
    from distill.recipe import load_recipe

    path = tmp / "recipe.yaml"
    path.write_text(yaml.safe_dump({"name": "bench-verify", "teacher": "smollm2-135m-instruct",
                                    "prompts": {"train": [{"source": "arithmetic", "count": 1}]},
                                    "verifiers": [{"name": "math", "timeout_seconds": timeout}]}))
    return load_recipe(path).verifiers


def rows_of(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"completion": c, "reference": r, "prompt_text": "q", "finish_reason": "stop", "tools": None}
            for c, r in pairs]


def side(verifiers, workers: int, pairs: list[tuple[str, str]], batch: int) -> dict:
    import ray

    from distill.stages.verify import VerifyPool

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        pool = VerifyPool(verifiers, workers=workers, cpus=1, time_limit=60, with_models=False)
        assert pool.on_ray
        warm = rows_of(completions(2, 99))
        for i in range(workers):  # a warm-up batch per worker: its imports and its math process's start
            pool.submit(warm, f"warm{i}")
        while pool.pending:
            list(pool.ready())
            time.sleep(0.05)
        verdicts = []
        started = time.perf_counter()
        for i in range(0, len(pairs), batch):
            pool.submit(rows_of(pairs[i:i + batch]), i)
            verdicts += [v for _, got in pool.ready() for v in got]
        verdicts += [v for _, got in pool.drain() for v in got]
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    scores = [v[0]["score"] for v in verdicts]
    stopped = sum("stopped" in v[0]["reason"] for v in verdicts)
    pool.close()
    towers = [{"score": v[0]["score"], "reason": v[0]["reason"]} for (c, _), v in zip(pairs, verdicts) if TOWER in c]
    return {"workers": workers, "completions": len(verdicts), "seconds": round(seconds, 2),
            "per_second": round(len(verdicts) / seconds, 1), "passed": scores.count(1.0),
            "failed": scores.count(0.0), "none": scores.count(None), "stopped": stopped, "tower_scores": towers}


def main() -> None:
    import tempfile
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--completions", type=int, default=2048)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--timeout", type=int, default=2, help="math's timeout_seconds; its hard limit is 3x + 1")
    ap.add_argument("--pathological-every", type=int, default=100)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        verifiers = spec(args.timeout, Path(tmp))
    clean = completions(args.completions, 0)
    one = side(verifiers, 1, clean, args.batch)
    two = side(verifiers, 2, clean, args.batch)
    for r in (one, two):
        del r["tower_scores"]
    mixed = completions(args.completions, 0, args.pathological_every)
    bad = side(verifiers, 2, mixed, args.batch)
    limit = 3 * args.timeout + 1
    towers = sum(TOWER in c for c, _ in mixed)
    tower_verdicts = bad.pop("tower_scores")
    bound = two["seconds"] + towers * limit / 2
    result = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "one_worker": one, "two_workers": two,
              "ratio": round(two["per_second"] / one["per_second"], 2), "pathological": bad,
              "pathological_answers": towers, "limit_s": limit, "pathological_bound_s": round(bound, 1),
              "pathological_accepted": sum(v["score"] == 1.0 for v in tower_verdicts),
              "pathological_reasons": sorted({v["reason"] for v in tower_verdicts})}
    print("BENCH " + json.dumps(result))
    print(f"math verifier, {args.completions} answers in batches of {args.batch}, local Ray with 2 CPUs")
    for name, r in (("1 worker", one), ("2 workers", two), ("2 workers, pathological", bad)):
        print(f"  {name:24} {r['seconds']:7.1f} s  {r['per_second']:7.1f} answers/s  passed {r['passed']}, "
              f"failed {r['failed']}, none {r['none']} (stopped {r['stopped']})")
    print(f"  2 workers / 1 worker: {result['ratio']:.2f}x")
    print(f"  pathological: {towers} tower answers, each stopped at {limit} s; the run took {bad['seconds']:.1f} s "
          f"against a bound of {bound:.1f} s ({'within' if bad['seconds'] <= bound else 'OVER'}); "
          f"accepted {result['pathological_accepted']} of {towers}; their verdicts: "
          f"{'; '.join(result['pathological_reasons'])}")


if __name__ == "__main__":
    main()
