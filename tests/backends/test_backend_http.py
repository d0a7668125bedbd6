"""The served-teacher backend (OpenAI-compatible HTTP).

Fast tests talk to a small fake OpenAI server on 127.0.0.1 whose answers each test scripts;
the slow test talks to a real `vllm serve`, killed and restarted mid-run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from distill.backends import BackendOptions
from distill.backends.openai_http import OpenAIHTTPBackend, make_http_backend, public_url
from distill.teachers import Teacher

FAST = {"backoff_base": 0.01, "backoff_max": 0.05}  # retries in milliseconds, not seconds


class FakeOpenAI:
    """A chat-completions server. `script(body, attempt)` may return a dict with status,
    headers, json and delay (seconds before answering); None answers 200 at once. The
    request is keyed by its last message's content; `attempt` counts from 1 per key."""

    def __init__(self):
        self.script = lambda body, attempt: None
        self.calls: list[dict] = []  # arrival time, key, headers, body
        self.attempts: Counter = Counter()
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = body["messages"][-1]["content"]
                with fake.lock:
                    fake.attempts[key] += 1
                    attempt = fake.attempts[key]
                    fake.calls.append({"at": time.monotonic(), "key": key, "path": self.path,
                                       "headers": dict(self.headers), "body": body})
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    answer = fake.script(body, attempt) or {}
                    time.sleep(answer.get("delay", 0))
                    payload = json.dumps(answer.get("json", completion(body, f"echo {key}"))).encode()
                    self.send_response(answer.get("status", 200))
                    for name, value in answer.get("headers", {}).items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
                    pass
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def arrivals(self, key: str) -> list[float]:
        return [c["at"] for c in self.calls if c["key"] == key]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def completion(body: dict, text: str, finish: str = "stop", reasoning: str | None = None) -> dict:
    message = {"role": "assistant", "content": text, **({"reasoning": reasoning} if reasoning else {})}
    return {"id": "cmpl-1", "object": "chat.completion", "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}}


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def teacher(base_url: str, **endpoint) -> Teacher:
    return Teacher.model_validate({
        "id": "served", "model": "org/served-model", "revision": "abc123", "licence": "apache-2.0", "params_b": 7,
        "endpoint": {"base_url": base_url, **endpoint},
    })


def work(n: int, **params) -> list[dict]:
    sampling = {"temperature": 0.7, "top_p": 0.9, "top_k": 0, "min_p": 0.0, "max_tokens": 16,
                "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "stop": None,
                "seed": 1, **params}
    return [{"work_id": f"p{i}:0", "messages": [{"role": "user", "content": f"q{i}"}],
             "sampling_params": {**sampling, "seed": sampling["seed"] + i}} for i in range(n)]


def run(backend: OpenAIHTTPBackend, requests: list[dict]) -> dict[str, dict]:
    """Every result by work id; asserts each request got exactly one."""
    rows = [r for batch in backend.generate(requests) for r in batch]
    assert sorted(r["work_id"] for r in rows) == sorted(w["work_id"] for w in requests)
    return {r["work_id"]: r for r in rows}


def test_request_maps_sampling_params_and_result_comes_from_the_response(fake):
    fake.script = lambda body, attempt: {"json": completion(body, "42", finish="length")}
    backend = OpenAIHTTPBackend(teacher(fake.url, model="served-name"), batch_size=4, **FAST)
    [request] = work(1, top_k=50, min_p=0.05, repetition_penalty=1.1, stop=["\n\n"], max_tokens=32,
                     presence_penalty=0.5, logprobs=None, min_tokens=2)
    rows = run(backend, [request])
    [call] = fake.calls
    assert call["path"] == "/v1/chat/completions"
    assert call["body"] == {
        "model": "served-name", "messages": [{"role": "user", "content": "q0"}], "n": 1,
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 32, "seed": 1, "stop": ["\n\n"],
        "presence_penalty": 0.5, "frequency_penalty": 0.0,
        "top_k": 50, "min_p": 0.05, "repetition_penalty": 1.1, "min_tokens": 2,  # vLLM extras; None left out
    }
    assert rows["p0:0"] == {"work_id": "p0:0", "text": "42", "prompt_tokens": 7, "completion_tokens": 3,
                            "finish_reason": "length", "error": ""}


def test_extras_not_sent_when_turned_off_and_the_drop_is_warned(fake, caplog):
    backend = OpenAIHTTPBackend(teacher(fake.url, send_extra_params=False), **FAST)
    run(backend, work(2, top_k=50, min_tokens=2))
    for call in fake.calls:
        assert set(call["body"]) == {"model", "messages", "n", "temperature", "top_p", "max_tokens", "seed",
                                     "presence_penalty", "frequency_penalty"}
        assert call["body"]["model"] == "org/served-model"  # the teacher's model when no served name is given
    assert "min_tokens, top_k are not sent" in caplog.text
    assert "min_p" not in caplog.text and "repetition_penalty" not in caplog.text  # neutral values


def test_many_requests_each_get_one_result_in_batches(fake):
    backend = OpenAIHTTPBackend(teacher(fake.url, max_concurrency=4), batch_size=4, **FAST)
    batches = list(backend.generate(work(10)))
    assert sorted(len(b) for b in batches) == [2, 4, 4]
    rows = {r["work_id"]: r for b in batches for r in b}
    assert len(rows) == 10 and all(r["text"] == f"echo q{w.split(':')[0][1:]}" for w, r in rows.items())
    assert backend.stats == {"requests": 10, "attempts": 10, "retries": 0, "errors": 0}


def test_slow_results_are_handed_over_before_a_batch_fills(fake):
    fake.script = lambda body, attempt: {"delay": 1.0} if body["messages"][-1]["content"] == "q2" else None
    backend = OpenAIHTTPBackend(teacher(fake.url), batch_size=100, flush_seconds=0.2, **FAST)
    assert sorted(len(b) for b in backend.generate(work(3))) == [1, 2]


def test_429_waits_for_retry_after_and_pauses_every_request(fake):
    def script(body, attempt):
        key = body["messages"][-1]["content"]
        if key == "q0" and attempt == 1:
            return {"status": 429, "headers": {"Retry-After": "1"}, "json": {"error": {"message": "slow down"}}}
        return {"delay": 0.2} if key == "q1" else None

    fake.script = script
    backend = OpenAIHTTPBackend(teacher(fake.url, max_concurrency=2), **FAST)
    rows = run(backend, work(3))
    assert all(not r["error"] for r in rows.values())
    first, second = fake.arrivals("q0")
    assert second - first >= 1.0
    # q2 was sent by the worker that finished q1 after 0.2 s: it too waited for the pause.
    assert fake.arrivals("q2")[0] - first >= 1.0
    assert backend.stats["retries"] == 1


def test_500_is_retried_with_backoff(fake):
    fake.script = lambda body, attempt: {"status": 500, "json": {"error": "boom"}} if attempt <= 2 else None
    backend = OpenAIHTTPBackend(teacher(fake.url), **FAST)
    rows = run(backend, work(2))
    assert all(r["error"] == "" and r["text"].startswith("echo") for r in rows.values())
    assert fake.attempts == {"q0": 3, "q1": 3}


def test_400_becomes_an_error_row_at_once(fake):
    def script(body, attempt):
        if body["messages"][-1]["content"] == "q0":
            return {"status": 400, "json": {"error": {"message": "This model's maximum context length is 512 tokens."}}}

    fake.script = script
    backend = OpenAIHTTPBackend(teacher(fake.url), **FAST)
    rows = run(backend, work(3))
    assert rows["p0:0"] == {"work_id": "p0:0", "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                            "finish_reason": "error",
                            "error": "HTTP 400: This model's maximum context length is 512 tokens. (not retried)"}
    assert fake.attempts["q0"] == 1
    assert not rows["p1:0"]["error"] and not rows["p2:0"]["error"]


def test_after_max_attempts_the_row_is_an_error_with_the_reason(fake):
    fake.script = lambda body, attempt: {"status": 503, "json": {"error": {"message": "overloaded"}}}
    backend = OpenAIHTTPBackend(teacher(fake.url, max_attempts=3), **FAST)
    rows = run(backend, work(2))
    assert {r["error"] for r in rows.values()} == {"HTTP 503: overloaded (gave up after 3 attempts)"}
    assert fake.attempts == {"q0": 3, "q1": 3}
    assert backend.stats == {"requests": 2, "attempts": 6, "retries": 4, "errors": 2}


def test_timeout_is_retried_then_gives_up(fake):
    def script(body, attempt):
        key = body["messages"][-1]["content"]
        if key == "q1" or (key == "q0" and attempt == 1):
            return {"delay": 1.0}

    fake.script = script
    backend = OpenAIHTTPBackend(teacher(fake.url, timeout_seconds=0.3, max_attempts=2), **FAST)
    started = time.monotonic()
    rows = run(backend, work(2))
    assert time.monotonic() - started < 1.0
    assert rows["p0:0"]["error"] == "" and fake.attempts["q0"] == 2
    assert rows["p1:0"]["error"] == "timed out after 0.3 s (gave up after 2 attempts)"


def test_unreachable_server_gives_error_rows_not_an_exception():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIHTTPBackend(teacher(f"http://127.0.0.1:{port}/v1", max_attempts=2), **FAST)
    rows = run(backend, work(3))
    assert all(r["error"].startswith("connection error: ConnectError") and r["error"].endswith("(gave up after 2 attempts)")
               and r["finish_reason"] == "error" for r in rows.values())


def test_concurrency_never_exceeds_the_bound(fake):
    fake.script = lambda body, attempt: {"delay": 0.15}
    backend = OpenAIHTTPBackend(teacher(fake.url, max_concurrency=3), **FAST)
    run(backend, work(12))
    assert fake.max_in_flight == 3


def test_request_rate_limit_spaces_requests(fake):
    backend = OpenAIHTTPBackend(teacher(fake.url, max_concurrency=8, requests_per_minute=600), **FAST)  # one per 0.1 s
    run(backend, work(6))
    times = sorted(c["at"] for c in fake.calls)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert times[-1] - times[0] >= 0.45 and min(gaps) >= 0.05


def test_token_rate_limit_charges_max_tokens_before_and_usage_after(fake):
    # 100 tokens/s. A request is charged ~5 prompt + 195 max tokens = 200: the next may go only
    # when the server's usage (10 tokens) gives the rest back, i.e. when the previous answers.
    fake.script = lambda body, attempt: {"delay": 0.4}
    backend = OpenAIHTTPBackend(teacher(fake.url, max_concurrency=4, tokens_per_minute=6000), **FAST)
    run(backend, work(4, max_tokens=195))
    times = sorted(c["at"] for c in fake.calls)
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Uncharged, all four would arrive together; uncorrected, 2 s apart.
    assert all(0.3 <= g <= 1.0 for g in gaps), gaps


def test_api_key_is_sent_as_bearer_and_recorded_nowhere(fake, monkeypatch):
    monkeypatch.setenv("DISTILL_TEST_KEY", "sk-secret-123")
    backend = OpenAIHTTPBackend(teacher(fake.url + "?api-version=2024-06-01", api_key_env="DISTILL_TEST_KEY",
                                        requests_per_minute=1000), **FAST)
    run(backend, work(1))
    [call] = fake.calls
    assert call["headers"]["Authorization"] == "Bearer sk-secret-123"
    assert call["path"] == "/v1/chat/completions?api-version=2024-06-01"  # the gateway's query is kept
    info = backend.describe()
    assert "sk-secret" not in json.dumps(info) and "DISTILL_TEST_KEY" not in json.dumps(info)
    assert info["backend"] == "openai-http" and info["version"] == f"httpx {httpx.__version__}"
    assert info["engine_args"] == {
        "endpoint": fake.url, "model": "org/served-model", "max_concurrency": 32, "requests_per_minute": 1000,
        "tokens_per_minute": None, "timeout_seconds": 600, "max_attempts": 10, "send_extra_params": True,
    }


def test_without_a_key_no_authorization_header(fake):
    run(OpenAIHTTPBackend(teacher(fake.url), **FAST), work(1))
    assert "Authorization" not in fake.calls[0]["headers"]


def test_a_missing_key_variable_fails_before_any_request(monkeypatch):
    monkeypatch.delenv("DISTILL_TEST_KEY", raising=False)
    with pytest.raises(ValueError, match="endpoint.api_key_env names DISTILL_TEST_KEY, which is not set"):
        make_http_backend(teacher("http://127.0.0.1:9/v1", api_key_env="DISTILL_TEST_KEY"), BackendOptions(batch_size=8))


def test_public_url_drops_credentials_query_and_fragment():
    assert public_url("https://user:pw@api.example.com:8443/v1/?key=abc#x") == "https://api.example.com:8443/v1/"
    assert public_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"


def test_reasoning_returned_apart_is_joined_back_as_a_think_block(fake):
    fake.script = lambda body, attempt: {"json": completion(body, "5", reasoning="2 + 3 = 5")}
    rows = run(OpenAIHTTPBackend(teacher(fake.url), **FAST), work(1))
    assert rows["p0:0"]["text"] == "<think>\n2 + 3 = 5\n</think>\n\n5"


def test_tools_are_sent_and_the_servers_parsed_calls_become_the_completion(fake):
    from distill.verifiers.tool_call import parse_tool_calls

    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

    def answer(body, attempt):
        message = {"role": "assistant", "content": "Checking." if body["messages"][-1]["content"] == "q0" else None,
                   "tool_calls": [{"id": "c1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
                                  {"id": "c2", "type": "function", "function": {"name": "get_weather",
                                                                                "arguments": "not json"}}]}
        return {"json": {"id": "x", "object": "chat.completion", "model": body["model"],
                         "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls"}],
                         "usage": {"prompt_tokens": 50, "completion_tokens": 9}}}

    fake.script = answer
    requests = [{**w, "tools": tools} for w in work(2)]
    rows = run(OpenAIHTTPBackend(teacher(fake.url), batch_size=2), requests)
    assert [c["body"]["tools"] for c in fake.calls] == [tools, tools]
    for wid, content in (("p0:0", "Checking."), ("p1:0", None)):
        r = rows[wid]
        assert r["tool_calls"] == [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                   {"name": "get_weather", "arguments": "not json"}]  # kept as the server gave it
        assert r["finish_reason"] == "stop" and r["text"].count("<tool_call>") == 2
        assert r["text"].startswith("Checking.\n<tool_call>") if content else r["text"].startswith("<tool_call>")
        assert parse_tool_calls(r["text"].split("</tool_call>")[0] + "</tool_call>")[0][:2] == ("get_weather", {"city": "Oslo"})


def test_a_malformed_answer_is_an_error_row(fake):
    fake.script = lambda body, attempt: {"json": {"object": "error"}}
    rows = run(OpenAIHTTPBackend(teacher(fake.url), **FAST), work(1))
    assert rows["p0:0"]["error"].startswith("unexpected response (KeyError") and fake.attempts["q0"] == 1


def test_stopping_early_cancels_what_is_in_flight(fake):
    fake.script = lambda body, attempt: {"delay": 0.3}
    backend = OpenAIHTTPBackend(teacher(fake.url, max_concurrency=2), batch_size=1, **FAST)
    results = backend.generate(work(20))
    next(results)
    started = time.monotonic()
    results.close()
    assert time.monotonic() - started < 1.0
    assert not [t for t in threading.enumerate() if t.name == "openai-http"]
    assert len(fake.calls) < 20


@pytest.mark.parametrize("endpoint, fragment", [
    ({"base_url": "http://u:pw@host/v1"}, "must not hold credentials"),
    ({"base_url": "https://host/v1?api-version=2024&api_key=abc"}, "looks like a credential \\(api_key\\)"),
    ({"base_url": "host:8000/v1"}, "must be an http:// or https:// URL"),
    ({"base_url": "http://host/v1", "max_concurency": 4}, "max_concurency"),
    ({"base_url": "http://host/v1", "max_attempts": 0}, "greater than or equal to 1"),
])
def test_endpoint_schema_rejects_bad_entries(endpoint, fragment):
    with pytest.raises(ValidationError, match=fragment):
        teacher(**endpoint)


def test_a_served_teacher_in_a_recipe(tmp_path):
    """Its rate limits do not decide the samples (a sibling run's samples are reused); engine
    arguments for a server distill does not run are refused."""
    import yaml

    from distill.recipe import RecipeError, load_recipe

    def recipe(limit, engine_args=None):
        entry = {"id": "served", "model": "org/model", "revision": "r1", "licence": "apache-2.0", "params_b": 7,
                 "endpoint": {"base_url": "http://127.0.0.1:9/v1", "requests_per_minute": limit}}
        (tmp_path / "served.yaml").write_text(yaml.safe_dump(entry))
        teacher_ref = {"id": "served.yaml", **({"engine_args": engine_args} if engine_args else {})}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump({
            "name": "served", "teacher": teacher_ref,
            "prompts": {"train": [{"source": "arithmetic", "count": 3}]}, "tracking": {"wandb": "disabled"}}))
        return load_recipe(tmp_path / "r.yaml")

    assert recipe(60).samples_key() == recipe(600).samples_key()
    with pytest.raises(RecipeError, match="teacher.engine_args: the teacher is served over HTTP"):
        recipe(60, {"enforce_eager": True})


def test_endpoint_defaults():
    t = teacher("http://host:8000/v1/")
    assert t.endpoint.base_url == "http://host:8000/v1"
    assert t.endpoint.model is None and t.endpoint.send_extra_params is True
    with pytest.raises(ValueError, match="has no endpoint"):
        make_http_backend(t.model_copy(update={"endpoint": None}), BackendOptions(batch_size=8))


# A real `vllm serve` on loopback, stopped and restarted mid-run.

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_vllm(model: Path, port: int, log: Path) -> subprocess.Popen:
    from distill.backends.vllm_ray import cpu_engine_env

    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", **cpu_engine_env()}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--gpu-memory-utilization", "0.1",
           "--no-enable-chunked-prefill", "--max-model-len", "512", "--dtype", "bfloat16"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_healthy(server: subprocess.Popen, port: int, log: Path, seconds: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        assert server.poll() is None, f"vllm serve exited:\n{log.read_text()[-3000:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"vllm serve not healthy after {seconds} s:\n{log.read_text()[-3000:]}")


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)  # the API server and its engine process: a crash
    server.wait()


@pytest.mark.slow
def test_real_vllm_serve_restarted_mid_run(tiny_model, tmp_path):
    port, log = free_port(), tmp_path / "vllm.log"
    servers = [start_vllm(tiny_model, port, log)]
    try:
        wait_healthy(servers[0], port, log)
        t = Teacher.model_validate({
            "id": "tiny-served", "model": str(tiny_model), "revision": "random-init-seed0", "licence": "apache-2.0",
            "params_b": 0.0032, "endpoint": {"base_url": f"http://127.0.0.1:{port}/v1", "max_concurrency": 4,
                                             "timeout_seconds": 60, "max_attempts": 40}})
        # Waits of 0.25-0.5 s doubling to 2.5-5 s: 40 attempts span at least ~90 s, more than a restart.
        backend = OpenAIHTTPBackend(t, batch_size=4, backoff_base=0.5, backoff_max=5)
        requests = work(40, temperature=1.0, top_k=50, min_p=0.01, repetition_penalty=1.05, max_tokens=64)
        rows, before_kill, restart_seconds = [], None, None
        for batch in backend.generate(requests):
            rows += batch
            if before_kill is None and len(rows) >= 8:
                before_kill = len(rows)
                stop(servers[0])
                servers.append(start_vllm(tiny_model, port, log))
                restart_seconds = wait_healthy(servers[1], port, log)
        assert before_kill is not None and before_kill < 40, "the kill must land mid-run"
        assert sorted(r["work_id"] for r in rows) == sorted(w["work_id"] for w in requests)  # one result each
        assert not [r["error"] for r in rows if r["error"]]
        assert all(r["finish_reason"] in ("stop", "length") and r["prompt_tokens"] > 0
                   and 0 < r["completion_tokens"] <= 64 for r in rows)
        assert backend.stats["retries"] > 0, "no request was in flight or sent while the server was down"
        print(f"restart took {restart_seconds:.0f} s; {before_kill} results before the kill; {backend.stats}")
    finally:
        for server in servers:
            stop(server)
