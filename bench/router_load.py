"""`distill serve` under load on loopback: concurrent tool-calling requests, then the same while
the student's replica is killed. Every request must be answered; exits 1 if one is not.

The app runs as `distill serve` runs it (distill.serve.app.start: Ray Serve, the Router deployment,
one Student deployment) with one real student, the shipped SmolLM2-135M-Instruct (hermes template,
tool-call verifier), and as the fallback a small OpenAI-compatible server in this process that
answers at once with a valid call. A weather agent's requests (its system prompt, its one tool,
a city) are sent with the official `openai` AsyncOpenAI client (no retries), `--concurrency` at a
time. Each answer is counted by who gave it (the `model` field and the x-distill-route header);
a request without an answer is lost (timeout, connection error) or an error (an HTTP error status).

The shipped base is no distilled tool caller: its calls almost never parse, so as a cascade
(`--policy cascade`) it hands nearly every request to the fallback after answering it. The default
policy `student` returns its answers as they are (the check still runs and is logged), so the
student carries the load.

Run 1 is steady. In run 2 the student's replica actor is killed (ray.kill) a quarter of the way
through (by default a quarter of run 1's time): its calls in flight fail, the breaker opens, calls
waiting for a replica time out (the student's timeout_seconds), and the fallback answers them
until Ray Serve has started a new replica. The served-call log (a temporary folder) must hold one
record per request with the same route and reason as the client saw. Last, the router's own
metrics are read from Ray's metrics port.

    python bench/router_load.py [--requests 200] [--concurrency 200] [--student-timeout 120] [--policy student]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import yaml

STUDENT, FAKE_MODEL = "weather-smollm2", "fake-llm"
SYSTEM = "You are the weather agent. Call a tool to answer."
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                   "required": ["city"]}}}]
CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Quito", "Perth", "Dakar", "Seoul", "Rome", "Bern", "Riga"]


class FakeLLM(BaseHTTPRequestHandler):
    """The fallback: answers every chat completion at once with a get_weather call."""

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        question = body["messages"][-1]["content"]
        city = next((c for c in CITIES if c in question), "Paris")
        call = {"id": f"call_{random.getrandbits(64):016x}", "type": "function",
                "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
        answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": FAKE_MODEL,
                  "choices": [{"index": 0, "finish_reason": "tool_calls",
                               "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
                  "usage": {"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512  # the router opens up to a connection per request in flight


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder: Path, upstream_port: int, args) -> Path:
    """A classifier that puts the weather agent's requests in cluster c0, and the serving config."""
    from distill.usage.classifier import RequestClassifier, Vectorizer, signature

    sigs = {signature(SYSTEM, ("get_weather",)): {"cluster": "c0", "share": 1.0, "calls": 20}}
    RequestClassifier([], ["c0"], np.zeros((0, 0)), Vectorizer([], [], {"system": 1.0, "tools": 1.0, "user": 1.0}),
                      sigs, 0.95, 0.1, 0.05, {"store": "none", "store_calls": 20, "clustering": "bench",
                                              "learnt_from": 20}).save(folder / "classifier.json")
    config = {
        "classifier": "classifier.json", "log_dir": "served",
        "fallback": {"base_url": f"http://127.0.0.1:{upstream_port}/v1", "model": FAKE_MODEL, "timeout_seconds": 30},
        "students": [{"cluster": "c0", "name": STUDENT, "model": "smollm2-135m-instruct", "template": "hermes",
                      "policy": args.policy, "verifier": "tool-call", "max_tokens": 64,
                      "timeout_seconds": args.student_timeout, "engine_args": {"max_model_len": 2048}}],
        # Every request of a run in flight at once: the router must let them all in.
        "limits": {"max_concurrency": max(args.requests, args.concurrency),
                   "timeout_seconds": args.student_timeout + 60},
        "breaker": {"failures": 5, "open_seconds": 30}}
    path = folder / "serve.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def student_replicas() -> list:
    """The Student deployment's replica actors (named SERVE_REPLICA::<app>#Student-<name>#<id> in the
    `serve` namespace; Ray's state API would need the dashboard, which `distill serve` does not start)."""
    import ray

    return [ray.get_actor(a["name"], namespace="serve") for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::")
            and f"#Student-{STUDENT}#" in a["name"]]


async def run(url: str, n: int, concurrency: int, timeout: float, kill_after: float | None = None) -> dict:
    """Sends n requests, `concurrency` at a time; kills the student's replica `kill_after` seconds in."""
    import openai
    import ray

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=timeout)
    gate, sent, outcomes, events, killing = asyncio.Semaphore(concurrency), 0, [], {}, []
    t0 = time.perf_counter()

    async def kill():
        await asyncio.sleep(kill_after)
        replicas = await asyncio.to_thread(student_replicas)
        for actor in replicas:
            await asyncio.to_thread(ray.kill, actor)
        events["killed"] = (time.perf_counter() - t0, len(replicas), sent, len(outcomes))

    if kill_after is not None:
        killing.append(asyncio.create_task(kill()))

    async def one(i: int):
        nonlocal sent
        async with gate:
            sent += 1
            city = CITIES[i % len(CITIES)]
            start = time.perf_counter()
            try:
                raw = await client.chat.completions.with_raw_response.create(
                    model="gpt-4o", tools=TOOLS, messages=[
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"What is the weather in {city} for the next {1 + i % 5} days?"}])
                answer = raw.parse()
                calls = answer.choices[0].message.tool_calls or []
                outcome = {"kind": "answered", "model": answer.model, "route": raw.headers.get("x-distill-route"),
                           "tool_call": any(c.function.name == "get_weather" for c in calls)}
            except (openai.APITimeoutError, openai.APIConnectionError) as e:
                outcome = {"kind": "lost", "error": type(e).__name__}
            except openai.APIStatusError as e:
                outcome = {"kind": "error", "error": f"HTTP {e.status_code}: {e.message[:120]}"}
            except Exception as e:  # noqa: BLE001 - counted, and shown below
                outcome = {"kind": "error", "error": f"{type(e).__name__}: {e}"[:160]}
            outcome.update(seconds=time.perf_counter() - start, done=time.perf_counter() - t0)
            outcomes.append(outcome)

    await asyncio.gather(*(one(i) for i in range(n)))
    wall = time.perf_counter() - t0
    await asyncio.gather(*killing)
    await client.close()
    return {"outcomes": outcomes, "wall": wall, **events}


def breaker_closed(url: str, timeout: float, patience: float = 600) -> float:
    """Waits until the student's breaker is closed (a run that overloads the student opens it), sending
    the one trial request a half-open breaker lets through; returns the seconds waited."""
    t0 = time.time()
    while time.time() < t0 + patience:
        health = json.loads(urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10).read())
        state = health["students"][STUDENT]
        if state == "closed":
            break
        if state == "half-open":
            asyncio.run(run(url, 1, 1, timeout))
        else:
            time.sleep(2)
    return time.time() - t0


def served_records(folder: Path) -> list[dict]:
    return [json.loads(line) for f in sorted(folder.glob("served-*.jsonl")) for line in f.read_text().splitlines()]


def route_metrics(calls: int, timeout: float = 60) -> list[str]:
    """The router's own series from Ray's metrics port, once they count `calls` calls (Ray exports
    every few seconds), each with the tags the router sets (Ray's and Ray Serve's left out)."""
    import ray

    port = ray.nodes()[0].get("MetricsExportPort")
    deadline, series = time.time() + timeout, []
    while time.time() < deadline:
        try:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        except OSError:
            text = ""
        series = [parse_series(line) for line in text.splitlines() if line.startswith(SERIES)]
        if sum(value for name, _, value in series if name == "ray_distill_router_calls_total") >= calls:
            break
        time.sleep(2)
    return [f"{name}{{{', '.join(f'{k}={v}' for k, v in tags.items())}}} {value:g}" for name, tags, value in series]


SERIES = ("ray_distill_router_calls_total", "ray_distill_router_fallbacks_total",
          "ray_distill_router_verifier_failures_total", "ray_distill_router_latency_seconds_count")
OWN_TAGS = ("route", "cluster", "model", "status", "reason")


def parse_series(line: str) -> tuple[str, dict, float]:
    """A Prometheus sample line: its name, the router's own tags, its value."""
    name, rest = line.split("{", 1)
    labels, value = rest.rsplit("} ", 1)
    tags = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
    return name, {k: tags[k] for k in OWN_TAGS if k in tags}, float(value)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="requests per run")
    ap.add_argument("--concurrency", type=int, default=200, help="requests in flight at once")
    ap.add_argument("--student-timeout", type=float, default=120, help="the student's timeout_seconds in the config")
    ap.add_argument("--policy", choices=["student", "cascade"], default="student", help="the student's policy")
    ap.add_argument("--kill-after", type=float, help="seconds into run 2 to kill the replica (default: a quarter "
                                                     "of run 1's time)")
    ap.add_argument("--client-timeout", type=float, default=600, help="seconds the client waits for an answer")
    ap.add_argument("--port", type=int, default=0, help="the app's port (0: a free one)")
    args = ap.parse_args()

    import ray

    from distill.serve.app import start, stop
    from distill.serve.config import load_config

    upstream = Server(("127.0.0.1", free_port()), FakeLLM)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_config(Path(tmp), upstream.server_port, args))
        t0 = time.time()
        try:
            url = start(config, "127.0.0.1", args.port or free_port())
            startup = time.time() - t0
            warm = asyncio.run(run(url, 1, 1, args.client_timeout, None))
            print(f"app up in {startup:.0f} s; first call {warm['wall']:.1f} s "
                  f"({warm['outcomes'][0].get('route') or warm['outcomes'][0].get('error')})")
            seen, results = len(served_records(Path(config.log_dir))), {}
            for name in ("steady", "replica killed"):
                kill_after = None if name == "steady" else args.kill_after or results["steady"]["wall"] / 4
                if kill_after is not None:
                    print(f"waited {breaker_closed(url, args.client_timeout):.0f} s for the student's breaker to close")
                    seen = len(served_records(Path(config.log_dir)))  # not the trial requests
                results[name] = asyncio.run(run(url, args.requests, args.concurrency, args.client_timeout, kill_after))
                records = served_records(Path(config.log_dir))
                results[name]["records"], seen = records[seen:], len(records)
            metrics = route_metrics(seen)
        finally:
            stop()
            ray.shutdown()
            upstream.shutdown()
    return 1 if report(results, args, startup, metrics) else 0


def report(results: dict, args, startup: float, metrics: list[str]) -> bool:
    """Prints the table, the fallbacks' reasons and the metrics; True when a request was not
    answered or the served log disagrees with what the client saw."""
    failed = False
    print(f"\n{args.requests} tool-calling requests per run, {args.concurrency} in flight; student {STUDENT} "
          f"(SmolLM2-135M, vLLM on CPU, policy {args.policy}, tool-call check), fallback {FAKE_MODEL} (local fake); "
          f"app up in {startup:.0f} s")
    print(f"{'run':<15}{'answered':>9}{'lost':>6}{'errors':>7}{'by student':>11}{'by fallback':>12}"
          f"{'tool call':>10}{'p50 s':>8}{'p95 s':>8}{'wall s':>8}")
    for name, r in results.items():
        out = r["outcomes"]
        kinds = Counter(o["kind"] for o in out)
        answered = [o for o in out if o["kind"] == "answered"]
        seconds = np.array([o["seconds"] for o in answered] or [0.0])
        print(f"{name:<15}{kinds['answered']:>9}{kinds['lost']:>6}{kinds['error']:>7}"
              f"{sum(o['model'] == STUDENT for o in answered):>11}{sum(o['model'] == FAKE_MODEL for o in answered):>12}"
              f"{sum(o['tool_call'] for o in answered):>10}{np.percentile(seconds, 50):>8.1f}"
              f"{np.percentile(seconds, 95):>8.1f}{r['wall']:>8.1f}")
    for name, r in results.items():
        out, records = r["outcomes"], r["records"]
        answered = [o for o in out if o["kind"] == "answered"]
        client = Counter(o["route"] for o in answered if o["model"] == FAKE_MODEL)
        logged = Counter(f"llm; reason={x['route']['reason']}" for x in records if x["route"]["answered_by"] == "llm")
        print(f"\n{name}: fallbacks by reason, as the client saw them (x-distill-route) / in the served log")
        for route in sorted(set(client) | set(logged)):
            print(f"  {route.removeprefix('llm; reason='):<18}{client[route]:>5} / {logged[route]:<5}")
        checked = [x["verdict"]["score"] for x in records if x.get("verdict")]
        print(f"  the student's answers that passed the tool-call check: {sum(s == 1.0 for s in checked)} of "
              f"{len(checked)}")
        if "killed" in r:
            at, count, sent, done = r["killed"]
            asked = [o["done"] for o in answered if o["done"] > at and (o["model"] == STUDENT or
                                                                         "verifier-failed" in o["route"])]
            print(f"  killed {count} student replica(s) at {at:.1f} s ({sent} requests sent, {done} answered); "
                  "a new replica answered " + (f"from {min(asked):.1f} s" if asked else "not within the run"))
        errors = Counter(o["error"] for o in out if o["kind"] != "answered")
        for error, n in errors.most_common(5):
            print(f"  not answered x{n}: {error}")
        if len(answered) < len(out):
            failed = True
        if len(records) != len(out) or client != logged:
            print(f"  the served log has {len(records)} records for {len(out)} requests, or other reasons")
            failed = True
        if name == "replica killed" and not r.get("killed", (0, 0))[1]:
            print("  no student replica was found to kill")
            failed = True
    print("\nthe router's metrics on Ray's metrics port:" if metrics else "\nthe router's metrics were not exported")
    for line in metrics:
        print(f"  {line}")
    print("\nFAILED: a request was not answered, or the log disagrees" if failed else "\nevery request was answered")
    return failed


if __name__ == "__main__":
    sys.exit(main())
