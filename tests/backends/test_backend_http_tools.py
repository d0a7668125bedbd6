"""The HTTP backend with tools against a real `vllm serve` on loopback, started as a user would
serve SmolLM2 for tool calls: the shipped hermes template and vLLM's hermes tool-call parser.
The server must render the tools (they cost prompt tokens), and any calls its parser returns
must be the calls distill reads from the same text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill import chat_templates
from distill.backends.openai_http import OpenAIHTTPBackend
from distill.prompts.tool_tasks import ToolTasksParams, generate_tool_tasks
from distill.teachers import Teacher, load_teacher, model_path
from distill.verifiers.tool_call import CallError, parse_tool_calls

from test_backend_http import free_port, stop, wait_healthy

pytestmark = pytest.mark.slow


def start_tool_server(model: str, port: int, log: Path) -> subprocess.Popen:
    from distill.backends.vllm_ray import cpu_engine_env
    from distill.hardware import cpu_has_bf16

    template = chat_templates.HERE / "hermes.jinja"
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "WARNING", **cpu_engine_env()}
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", "smollm2",
           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--gpu-memory-utilization", "0.1",
           "--max-model-len", "2048",
           "--dtype", "bfloat16" if cpu_has_bf16() else "float32",  # emulated bf16 is several times slower
           "--chat-template", str(template),
           "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def requests_for(rows: list[dict], samples: int, with_tools: bool) -> list[dict]:
    params = {"temperature": 0.8, "top_p": 0.95, "top_k": 0, "min_p": 0.0, "max_tokens": 96, "repetition_penalty": 1.0,
              "presence_penalty": 0.0, "frequency_penalty": 0.0, "stop": None}
    out = []
    for i, row in enumerate(rows):
        for j in range(samples):
            r = {"work_id": f"p{i}:{j}", "messages": row["messages"], "sampling_params": {**params, "seed": 100 * i + j}}
            if with_tools:
                r["tools"] = row["tools"]
            out.append(r)
    return out


def test_tools_go_to_a_real_vllm_serve_and_its_parsed_calls_become_the_completion(tmp_path):
    model = model_path(load_teacher("smollm2-135m-instruct"))
    port, log = free_port(), tmp_path / "vllm.log"
    server = start_tool_server(model, port, log)
    try:
        wait_healthy(server, port, log)
        teacher = Teacher.model_validate({
            "id": "smollm2-served", "model": "smollm2", "revision": "wheel", "licence": "apache-2.0", "params_b": 0.135,
            "endpoint": {"base_url": f"http://127.0.0.1:{port}/v1", "max_concurrency": 8, "timeout_seconds": 120}})
        backend = OpenAIHTTPBackend(teacher, batch_size=8)
        # Requests a tool answers (single, parallel); the tasks the demo trains on.
        rows = list(generate_tool_tasks(ToolTasksParams(count=6, seed=5, mix={"single": 1, "parallel": 1})))
        samples = 6
        with_tools = {r["work_id"]: r for batch in backend.generate(requests_for(rows, samples, True)) for r in batch}
        bare = {r["work_id"]: r for batch in backend.generate(requests_for(rows, 1, False)) for r in batch}
    finally:
        stop(server)

    assert len(with_tools) == len(rows) * samples and len(bare) == len(rows)
    assert not [r["error"] for r in [*with_tools.values(), *bare.values()] if r["error"]]
    for i, row in enumerate(rows):
        # The server's template wrote every tool definition into the prompt.
        definitions = len(json.dumps(row["tools"])) // 8  # well under a token per 4 characters of JSON
        assert with_tools[f"p{i}:0"]["prompt_tokens"] > bare[f"p{i}:0"]["prompt_tokens"] + definitions
    # SmolLM2-135M seldom writes a call unconstrained (none in 36 samples of these tasks is usual):
    # the calls that do come back must read back the same; the fake-server tests of
    # test_backend_http.py cover turning a server's tool_calls into the completion either way.
    called = [r for r in with_tools.values() if r.get("tool_calls")]
    for r in called:
        # The server's parsed calls are the completion's calls: distill reads the same ones back.
        assert "<tool_call>" in r["text"] and r["finish_reason"] in ("stop", "length")
        try:
            ours = [{"name": name, "arguments": args} for name, args, _ in parse_tool_calls(r["text"])]
        except CallError as e:  # the server kept arguments that are not a JSON object as text
            pytest.fail(f"{r['work_id']}: the server's calls do not read back: {e}: {r['text']!r}")
        assert ours == r["tool_calls"]
    print(f"{len(called)} of {len(with_tools)} samples made calls the server parsed")
