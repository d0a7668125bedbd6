"""Milliseconds the router adds to a call (distill.serve.router): classification, the policy, the
check of the student's answer and the served-call log, against asking the student directly.

The student is a stand-in that answers at once with the call's logged answer (so a tool call
passes the cascade's check), which leaves only the router's own work in the difference: the
model's time is the same on both sides and is left out. A demo agent's log (distill.usage.synthetic)
is imported and clustered in a temporary folder; the classifier learns from three calls in four,
and the held-back fourth is sent as logged, one call at a time, over several rounds, each side in
the same process and event loop. The router is timed three ways: without a log, with the log
redacted by rules only, and with the log as `distill serve` writes it (rules and spaCy NER,
fsynced before the answer).

    python bench/router_overhead.py [--calls 600] [--seed 7] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import numpy as np


class LoggedAnswers:
    """A student that answers each request with its logged answer, at once."""

    def __init__(self, answers: dict[str, object]):
        self.answers = answers

    async def answer(self, request: dict):
        return self.answers[json.dumps(request["messages"], sort_keys=True)]


class NoUpstream:
    async def chat(self, request: dict) -> dict:
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "llm",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the LLM"},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}


class NoLog:
    async def append(self, record: dict) -> None:
        return None


def answer_of(message: dict, tools: bool):
    """The logged assistant message as the student's Answer, its calls in the hermes text a
    SmolLM2 student writes."""
    from distill.serve.router import Answer
    from distill.serve.student import assistant_message

    calls = message.get("tool_calls") or []
    if calls:
        text = "\n".join("<tool_call>\n" + json.dumps({"name": c["function"]["name"],
                                                       "arguments": json.loads(c["function"]["arguments"] or "{}")})
                         + "\n</tool_call>" for c in calls)
    else:
        text = message.get("content") or ""
    return Answer(text, assistant_message(text, tools), "stop", 10, 5)


def timed(loop, fn, requests: list[dict], rounds: int) -> np.ndarray:
    out = []
    for _ in range(rounds):
        for request in requests:
            start = time.perf_counter()
            loop.run_until_complete(fn(request))
            out.append(time.perf_counter() - start)
    return np.array(out) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=600)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from distill.serve.config import ServeConfig
    from distill.serve.router import Router
    from distill.serve.served_log import ServedLog
    from distill.usage import UsageStore, import_logs
    from distill.usage.classifier import RequestClassifier
    from distill.usage.clusters import cluster_store
    from distill.usage.synthetic import write_demo_logs

    with tempfile.TemporaryDirectory() as tmp:
        log = write_demo_logs(Path(tmp) / "demo.jsonl", args.calls, args.seed, 0.3)
        store = str(Path(tmp) / "store")
        import_logs([str(Path(tmp) / "demo.jsonl")], store, use_ner=False)
        cluster_store(store)
        rows = UsageStore.open(store).read_calls(["call_id", "source_line", "status"]).to_pylist()
        held = [r for r in rows[::4] if r["status"] == "ok"]
        classifier = RequestClassifier.fit(store, leave_out={r["call_id"] for r in held})
        clusters = sorted(set(UsageStore.open(store).read_assignments().values()))

        records = [log.records[r["source_line"] - 1] for r in held]
        records = [r for r in records if r.get("response")]
        requests = [r["request"] for r in records]
        answers = {json.dumps(r["request"]["messages"], sort_keys=True):
                   answer_of(r["response"]["choices"][0]["message"], bool(r["request"].get("tools")))
                   for r in records}
        tool_clusters = {classifier.classify(q).cluster for q in requests if q.get("tools")}
        config = ServeConfig.model_validate({
            "classifier": "classifier.json", "fallback": {"base_url": "http://127.0.0.1:1/v1", "model": "llm"},
            "students": [{"cluster": c, "name": f"student-{c}", "model": "m", "min_confidence": 0.0,
                          "policy": "cascade" if c in tool_clusters else "student",
                          "verifier": "tool-call" if c in tool_clusters else "none"} for c in clusters]})
        student = LoggedAnswers(answers)
        students = {s.name: student for s in config.students}
        sides = {"router, no log": NoLog(), "router + log, rules": ServedLog(Path(tmp) / "rules", use_ner=False),
                 "router + log, rules + NER": ServedLog(Path(tmp) / "ner", use_ner=True)}
        loop = asyncio.new_event_loop()
        routers = {name: Router(config, classifier, students, NoUpstream(), call_log) for name, call_log in sides.items()}
        for r in routers.values():  # warm-up: lazy imports, spaCy's pipeline, caches
            timed(loop, r.handle, requests[:20], 1)
        timed(loop, student.answer, requests[:20], 1)
        direct = timed(loop, student.answer, requests, args.rounds)
        results = {name: timed(loop, r.handle, requests, args.rounds) for name, r in routers.items()}
        served = [loop.run_until_complete(routers["router, no log"].handle(q)) for q in requests]
        loop.close()

    by_student = sum(s.route.startswith("student-") for s in served)
    print(f"workload: demo agent, {args.calls} calls (seed {args.seed}), {len(requests)} held-back requests as logged "
          f"x {args.rounds} rounds, each call timed alone; {len(config.students)} students "
          f"({len(tool_clusters)} tool-call cascades); {by_student} of {len(served)} answered by a student")
    print(f"{'student directly':<28}: p50 {np.percentile(direct, 50):7.3f} ms   p99 {np.percentile(direct, 99):7.3f} ms")
    for name, ms in results.items():
        print(f"{name:<28}: p50 {np.percentile(ms, 50):7.3f} ms   p99 {np.percentile(ms, 99):7.3f} ms   "
              f"added p50 {np.percentile(ms, 50) - np.percentile(direct, 50):7.3f} ms")


if __name__ == "__main__":
    main()
