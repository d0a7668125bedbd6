"""Sampling throughput of one recipe with 1 and with 2 engine replicas on a local multi-node
Ray cluster (cluster/local.sh: a head of one logical CPU and two workers of two, on loopback).

Both sides are the same recipe (the demo teacher, SmolLM2-135M-Instruct, on arithmetic prompts)
submitted with `distill submit --until sample`, one after the other, each into a fresh run
directory; only `cluster.replicas` differs. A side's time runs from the start of its sampling
pass (samples/attempts.json) to its last sample written (the samples' created_at), so it holds
the engines' start and the whole generation, and not the job's runtime-env setup. Printed: samples,
completion tokens, seconds, samples/s and tokens/s per side, and the ratio 2 replicas / 1.

On a machine with 2 cores, expect a ratio near 1: the two replicas are two engines on the same
two cores (each engine computes on every core of its node, and all nodes are this machine), so
the second replica adds scheduling and memory, not compute. On a cluster whose nodes are
separate machines (or GPUs), replicas add compute and the ratio approaches the replica count.

    python bench/replicas.py [--prompts 64] [--n 4] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL_SH = ROOT / "cluster" / "local.sh"


def cluster_env(state: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from support.localcluster import free_base_port  # the tests' port finder: Ray binds ports near the ones given

    env = {**os.environ, "DISTILL_LOCAL_RAY_DIR": str(state), "DISTILL_LOCAL_RAY_BIN": str(Path(sys.executable).parent),
           # Two logical CPUs a worker: an engine's one, and room for the quarter-CPU light stages
           # (with one, a light stage on a worker keeps an engine off it and the pool never fills).
           "DISTILL_LOCAL_RAY_WORKER_CPUS": "2",
           "DISTILL_LOCAL_RAY_PORT": str(free_base_port((0, 1))),
           "DISTILL_LOCAL_RAY_DASHBOARD_PORT": str(free_base_port((0, 100, 101, 102)))}
    env.pop("RAY_ADDRESS", None)
    return env


def local_sh(env: dict, *args: str) -> str:
    out = subprocess.run(["bash", str(LOCAL_SH), *args], env=env, capture_output=True, text=True, timeout=600)
    if out.returncode:
        sys.exit(f"cluster/local.sh {' '.join(args)} failed:\n{out.stdout}\n{out.stderr}")
    return out.stdout


def distill(env: dict, cwd: Path, *args: str, timeout: float = 3600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def side(env: dict, work: Path, replicas: int, args) -> dict:
    folder = work / f"replicas-{replicas}"
    folder.mkdir()
    (folder / "recipe.yaml").write_text(yaml.safe_dump({
        "name": f"bench-replicas-{replicas}",
        "teacher": "smollm2-135m-instruct",
        "prompts": {"train": [{"source": "arithmetic", "count": args.prompts, "seed": 11}]},
        "sampling": {"n": args.n, "temperature": 0.8, "top_p": 0.95, "max_tokens": args.max_tokens, "seed": 0,
                     "batch_size": 16},
        "verifiers": [{"name": "final-number"}],
        # The first prompt waits for every engine: otherwise, on a small machine, the second engine
        # may still be starting when the first has answered everything.
        "cluster": {"replicas": replicas, "cpus_per_replica": 1, "resources_per_replica": {"worker": 1},
                    "wait_for_replicas_s": 900},
        "tracking": {"wandb": "disabled"},
    }))
    sent = distill(env, folder, "submit", "recipe.yaml", "--output-dir", str(folder / "runs"), "--until", "sample")
    if sent.returncode:
        sys.exit(f"submit failed:\n{sent.stdout}\n{sent.stderr}")
    job_id = sent.stdout.strip()
    run_dir = Path(re.search(r"run directory \(on the cluster\): (\S+)", sent.stderr).group(1))
    started = time.time()
    followed = distill(env, folder, "logs", job_id, "--follow")
    job_seconds = time.time() - started
    status = distill(env, folder, "status", job_id).stdout
    if followed.returncode or "status: SUCCEEDED" not in status:
        sys.exit(f"job {job_id} did not succeed:\n{status}\n{followed.stdout[-3000:]}")

    import pyarrow.parquet as pq

    rows = [r for p in sorted((run_dir / "samples").glob("part-*.parquet"))
            for r in pq.read_table(p, columns=["completion_tokens", "created_at", "replica"]).to_pylist()]
    attempts = json.loads((run_dir / "samples" / "attempts.json").read_text())
    begun = datetime.fromisoformat(attempts[0]["at"])
    seconds = (max(r["created_at"] for r in rows) - begun).total_seconds()
    tokens = sum(r["completion_tokens"] for r in rows)
    return {"replicas": replicas, "engines_seen": len({r["replica"] for r in rows}), "samples": len(rows),
            "tokens": tokens, "seconds": seconds, "samples_per_s": len(rows) / seconds,
            "tokens_per_s": tokens / seconds, "job_seconds": job_seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=128)
    args = p.parse_args()

    state = Path(tempfile.mkdtemp(prefix="dbr-", dir="/tmp"))  # short: Ray's socket paths live under it
    env = cluster_env(state)
    out = local_sh(env, "start", "2")
    env["RAY_ADDRESS"] = re.search(r"RAY_ADDRESS=(\S+)", out).group(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = [side(env, Path(tmp), r, args) for r in (1, 2)]
    finally:
        local_sh(env, "stop")
    print(f"{args.prompts} prompts x n={args.n}, max_tokens {args.max_tokens}; local cluster: head + 2 workers, "
          f"an engine on each worker, on a machine with {os.cpu_count()} cores")
    for r in results:
        print(f"  replicas {r['replicas']} ({r['engines_seen']} engine processes answered): {r['samples']} samples, "
              f"{r['tokens']} tokens in {r['seconds']:.1f} s: {r['samples_per_s']:.2f} samples/s, "
              f"{r['tokens_per_s']:.0f} tokens/s (job {r['job_seconds']:.0f} s)")
    one, two = results
    print(f"ratio (2 replicas / 1), samples/s: {two['samples_per_s'] / one['samples_per_s']:.2f}")


if __name__ == "__main__":
    main()
