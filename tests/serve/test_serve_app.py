"""`distill serve`'s Ray Serve app on loopback with a real student (the shipped SmolLM2-135M,
hermes template) and a tiny local OpenAI-compatible server as the fallback, called with the
official `openai` client, streamed answers too."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from conftest import SUPPORT_SYSTEM, TOOLS, WEATHER_SYSTEM
from distill.usage.classifier import RequestClassifier, Vectorizer, signature

pytestmark = pytest.mark.slow
KEY_ENV, KEY = "DISTILL_SERVE_TEST_KEY", "client-key-123"
FAKE_MODEL = "fake-llm-1"


class FakeLLM(BaseHTTPRequestHandler):
    asked: list = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        FakeLLM.asked.append(body)
        answer = {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": FAKE_MODEL,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": "the LLM says hello"},
                               "finish_reason": "stop"}], "usage": {"prompt_tokens": 5, "completion_tokens": 4,
                                                                    "total_tokens": 9}}
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_app_routes_to_a_real_student_and_to_the_fallback(tmp_path):
    import openai
    import ray
    from ray import serve

    from distill.serve.app import start, stop
    from distill.serve.config import load_config
    from distill.usage.importer import import_logs

    # Both of the weather agent's prompts (with and without its tool) belong to cluster c0.
    sigs = {signature(WEATHER_SYSTEM, ("get_weather",)): {"cluster": "c0", "share": 1.0, "calls": 20},
            signature(SUPPORT_SYSTEM, ()): {"cluster": "c0", "share": 1.0, "calls": 20}}
    RequestClassifier([], ["c0"], __import__("numpy").zeros((0, 0)),
                      Vectorizer([], [], {"system": 1.0, "tools": 1.0, "user": 1.0}), sigs, 0.95, 0.1, 0.05,
                      {"store": "none", "store_calls": 40, "clustering": "t", "learnt_from": 40}
                      ).save(tmp_path / "classifier.json")
    upstream = ThreadingHTTPServer(("127.0.0.1", free_port()), FakeLLM)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({
        "classifier": "classifier.json", "api_key_env": KEY_ENV, "log_dir": "served",
        "fallback": {"base_url": f"http://127.0.0.1:{upstream.server_port}/v1", "model": FAKE_MODEL,
                     "timeout_seconds": 10},
        "students": [{"cluster": "c0", "name": "weather-smollm2", "model": "smollm2-135m-instruct", "template": "hermes",
                      "policy": "cascade", "verifier": "tool-call", "max_tokens": 48, "timeout_seconds": 60,
                      "engine_args": {"max_model_len": 2048}}]}))
    config = load_config(tmp_path / "serve.yaml")
    os.environ[KEY_ENV] = KEY  # before Ray starts: its workers inherit the environment
    port = free_port()
    try:
        t0 = time.time()
        url = start(config, "127.0.0.1", port)
        startup = time.time() - t0
        client = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=120)

        def ask(system, user, tools=None):
            raw = client.chat.completions.with_raw_response.create(
                model="gpt-4o", messages=[{"role": "system", "content": system}, {"role": "user", "content": user}],
                **({"tools": tools} if tools else {}))
            return raw.headers.get("x-distill-route"), raw.parse()

        t0 = time.time()
        route, plain = ask(SUPPORT_SYSTEM, "Say hello to the customer in one short sentence.")
        first_call = time.time() - t0
        # No tools to check against: the cascade returns the student's answer.
        assert route == "weather-smollm2" and plain.model == "weather-smollm2"
        assert plain.choices[0].message.content.strip() and plain.usage.completion_tokens > 0

        route, tooled = ask(WEATHER_SYSTEM, "What is the weather in Paris for the next 2 days?", TOOLS)
        if route == "weather-smollm2":  # its call parsed and fit the schema
            call = tooled.choices[0].message.tool_calls[0]
            assert call.function.name == "get_weather" and "city" in json.loads(call.function.arguments)
            assert tooled.choices[0].finish_reason == "tool_calls"
        else:  # a 135M model may write a broken call: the LLM answers instead
            assert route == "llm; reason=verifier-failed" and tooled.model == FAKE_MODEL
            assert tooled.choices[0].message.content == "the LLM says hello"

        route, unrouted = ask("You translate French to German.", "Bonjour")
        assert route == "llm; reason=unrouted" and unrouted.model == FAKE_MODEL
        assert FakeLLM.asked[-1]["model"] == FAKE_MODEL

        assert {m.id for m in client.models.list().data} == {"weather-smollm2", FAKE_MODEL}
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).models.list()

        # Streamed: the same routing, the checked answer sent as chunks, usage last.
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "system", "content": WEATHER_SYSTEM},
                                      {"role": "user", "content": "What is the weather in Oslo?"}],
            tools=TOOLS, stream=True, stream_options={"include_usage": True})
        route, got = raw.headers.get("x-distill-route"), list(raw.parse())
        assert raw.headers["content-type"].startswith("text/event-stream")
        assert {c.model for c in got} == {"weather-smollm2" if route == "weather-smollm2" else FAKE_MODEL}
        calls = [t for c in got if c.choices for t in c.choices[0].delta.tool_calls or []]
        text = "".join(c.choices[0].delta.content or "" for c in got if c.choices)
        if route == "weather-smollm2":
            assert calls and calls[0].function.name == "get_weather"
            assert "city" in json.loads(calls[0].function.arguments)
        else:
            assert route == "llm; reason=verifier-failed" and text == "the LLM says hello"
        assert got[-1].choices == [] and got[-1].usage.total_tokens > 0
        assert not any("stream" in asked or "stream_options" in asked for asked in FakeLLM.asked)

        logs = list((tmp_path / "served").glob("served-*.jsonl"))
        records = [json.loads(line) for f in logs for line in f.read_text().splitlines()]
        assert [r["route"]["answered_by"] for r in records][0] == "weather-smollm2" and len(records) == 4
        summary = import_logs([str(f) for f in logs], str(tmp_path / "store"))
        assert summary.read == 4 and not summary.malformed
        print(f"\nstartup {startup:.0f} s, first student call {first_call:.1f} s, tools call route: "
              f"{records[1]['route']['answered_by']} ({records[1]['route']['reason']}, verdict "
              f"{records[1]['verdict']})")
    finally:
        stop()
        ray.shutdown()
        upstream.shutdown()
        os.environ.pop(KEY_ENV, None)
