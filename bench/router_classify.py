"""Microseconds per request of the router's request classifier (distill.usage.classifier), against
`json.dumps(request)`: a cost any router pays per request anyway, to forward it.

A demo agent's log (distill.usage.synthetic) is imported into a store in a temporary folder and
clustered; the classifier learns from three calls in four, and classifies the requests of the
held-back fourth as they were logged (unredacted, with model and sampling fields), each timed
alone, over several rounds. Both sides run in this process, one after the other: each is a
few microseconds, far below what a second process would add. Printed: p50 and p99 of each side,
each level of the classifier apart, the ratio, and how many routes agree with the stored cluster.

    python bench/router_classify.py [--calls 1200] [--seed 7] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def timed(fn, requests: list[dict], rounds: int) -> np.ndarray:
    """Nanoseconds of each call of fn, every request once per round."""
    out = np.empty(len(requests) * rounds)
    clock, k = time.perf_counter_ns, 0
    for _ in range(rounds):
        for request in requests:
            start = clock()
            fn(request)
            out[k] = clock() - start
            k += 1
    return out


def us(ns: np.ndarray, q: float) -> float:
    return float(np.percentile(ns, q)) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=1200)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--untagged", type=float, default=0.3)
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()

    from distill.usage import UsageStore, import_logs
    from distill.usage.classifier import RequestClassifier
    from distill.usage.clusters import cluster_store
    from distill.usage.synthetic import write_demo_logs

    with tempfile.TemporaryDirectory() as tmp:
        log = write_demo_logs(Path(tmp) / "demo.jsonl", args.calls, args.seed, args.untagged)
        store = str(Path(tmp) / "store")
        import_logs([str(Path(tmp) / "demo.jsonl")], store, use_ner=False)
        cluster_store(store)
        rows = UsageStore.open(store).read_calls(["call_id", "source_line"]).to_pylist()
        assignments = UsageStore.open(store).read_assignments()
        held = rows[::4]
        started = time.perf_counter()
        classifier = RequestClassifier.fit(store, leave_out={r["call_id"] for r in held})
        fit_seconds = time.perf_counter() - started

    requests = [log.records[r["source_line"] - 1]["request"] for r in held]
    routes = [classifier.classify(q) for q in requests]
    agree = sum(route.cluster == assignments[r["call_id"]] for route, r in zip(routes, held))
    by_how = {how: [q for q, route in zip(requests, routes) if route.how == how] for how in ("signature", "centroid", "none")}

    for _ in range(2):  # warm-up: first calls pay for caches and lazy imports
        timed(classifier.classify, requests, 1)
        timed(json.dumps, requests, 1)
    c = timed(classifier.classify, requests, args.rounds)
    j = timed(json.dumps, requests, args.rounds)
    levels = {how: timed(classifier.classify, qs, args.rounds) for how, qs in by_how.items() if qs}

    print(f"workload: demo agent, {args.calls} calls (seed {args.seed}, {args.untagged:.0%} untagged), fitted on "
          f"{classifier.meta['learnt_from']} in {fit_seconds:.2f} s; {len(requests)} held-back requests as logged "
          f"x {args.rounds} rounds, each call timed alone")
    print(f"routes: {agree} of {len(requests)} agree with the stored cluster; "
          + ", ".join(f"{len(qs)} by {how}" for how, qs in by_how.items()))
    print(f"classify        : p50 {us(c, 50):6.1f} us   p99 {us(c, 99):6.1f} us")
    for how, ns in levels.items():
        print(f"  by {how:<12}: p50 {us(ns, 50):6.1f} us   p99 {us(ns, 99):6.1f} us")
    print(f"json.dumps      : p50 {us(j, 50):6.1f} us   p99 {us(j, 99):6.1f} us")
    print(f"ratio (classify / json.dumps): p50 {us(c, 50) / us(j, 50):.2f}, p99 {us(c, 99) / us(j, 99):.2f}   "
          "target: p99 well under 1,000 us")


if __name__ == "__main__":
    main()
