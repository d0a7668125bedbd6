"""End to end on CPU: `distill run` drives a real vLLM engine on a local Ray cluster.

One sampling run is shared by the tests here (an engine start costs tens of seconds):
it is killed with SIGKILL mid-sampling, then the same command finishes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from support.models import write_tiny_teacher
from distill.run import RunDir
from distill.schema import SAMPLE_SCHEMA

pytestmark = pytest.mark.slow

N_PROMPTS, N = 150, 4
LONG_QUESTION = "count " * 700  # longer than the tiny teacher's 512-token context


def distill(args, cwd, **kw):
    return subprocess.Popen([sys.executable, "-m", "distill.cli", *args], cwd=cwd, stdout=kw.pop("stdout", None),
                            stderr=subprocess.STDOUT, start_new_session=True, **kw)


@pytest.fixture(scope="module")
def killed_and_resumed(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    write_tiny_teacher(work / "tiny.yaml", tiny_model)
    (work / "long.jsonl").write_text(json.dumps({"question": LONG_QUESTION, "answer": "1"}) + "\n")
    (work / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "e2e",
        "teacher": {"id": "tiny.yaml", "engine_args": {"gpu_memory_utilization": 0.1}},
        "prompts": {"train": [{"source": "arithmetic", "count": N_PROMPTS, "seed": 3},
                              {"source": "jsonl", "path": "long.jsonl", "answer_field": "answer", "licence": "cc0-1.0"}],
                    "eval": [{"source": "arithmetic", "count": 10, "seed": 4}]},
        "sampling": {"n": N, "temperature": 1.0, "top_k": 50, "max_tokens": 48, "batch_size": 8, "seed": 5,
                     "stop": ["\n\n\n"], "extra": {"ignore_eos": False}},
        "verifiers": [{"name": "final-number"}],
    }))
    samples = None
    log = open(work / "first.log", "wb")
    first = distill(["run", "recipe.yaml"], work, stdout=log)
    deadline = time.time() + 400
    try:
        while time.time() < deadline and first.poll() is None:
            samples = next((work / "runs" / "e2e").glob("*/samples"), None)
            if samples and len(list(samples.glob("part-*.parquet"))) >= 2:
                break
            time.sleep(0.1)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)  # the driver, Ray and the engine: a crash, not a shutdown
        first.wait()
    assert samples is not None, (work / "first.log").read_text()[-3000:]
    run_dir = samples.parent
    after_kill = RunDir(run_dir).read_samples().num_rows
    second = distill(["run", "recipe.yaml"], work, stdout=subprocess.PIPE)
    out, _ = second.communicate(timeout=600)
    return {"run_dir": run_dir, "after_kill": after_kill, "rc": second.returncode, "out": out.decode()}


def test_rerun_after_sigkill_finishes_with_nothing_lost_or_duplicated(killed_and_resumed):
    r = killed_and_resumed
    assert r["rc"] == 0, r["out"][-3000:]
    prompts = RunDir(r['run_dir']).read_prompts("train")
    assert len(prompts) == N_PROMPTS + 1  # the generated ones and the long one
    total = len(prompts) * N
    assert 0 < r["after_kill"] < total, "the kill must land mid-sampling for this test to mean anything"
    table = RunDir(r['run_dir']).read_samples()
    keys = list(zip(table["prompt_id"].to_pylist(), table["sample_index"].to_pylist()))
    assert len(keys) == total and len(set(keys)) == total
    # no temporary file left behind: only parts and the record of the sampling passes
    assert not [p for p in (r["run_dir"] / "samples").iterdir()
                if not p.name.startswith("part-") and p.name != "attempts.json"]
    manifest = json.loads((r["run_dir"] / "dataset" / "manifest.json").read_text())
    assert manifest["samples"] == total and manifest["rows"] + sum(manifest["dropped"].values()) == total


def test_samples_carry_every_lineage_field(killed_and_resumed):
    rows = RunDir(killed_and_resumed['run_dir']).read_samples().to_pylist()
    good = [r for r in rows if not r["error"]]
    assert good, "the engine produced no completion"
    optional = {"error", "reference"}
    # question prompts through the model's own template: no tools, no calls, no template override
    without_tools = {"tools", "tool_calls", "chat_template"}
    for r in good:
        missing = [k for k in SAMPLE_SCHEMA.names if k not in optional | without_tools and r[k] is None]
        assert not missing, missing
        assert all(r[k] is None for k in without_tools), {k: r[k] for k in without_tools}
    r = good[0]
    assert r["teacher_id"] == "tiny-random" and r["teacher_revision"] == "random-init-seed0"
    assert r["backend"] == "vllm-ray-data" and r["backend_version"]
    assert json.loads(r["engine_args"])["enable_chunked_prefill"] is False  # the CPU seeded-sampling fix
    params = json.loads(r["sampling_params"])
    assert (params["top_k"], params["max_tokens"], params["stop"], params["seed"]) == (50, 48, ["\n\n\n"], r["seed"])
    assert {x["finish_reason"] for x in good} <= {"stop", "length"}
    assert all(x["completion_tokens"] <= 48 and x["prompt_tokens"] > 0 for x in good)
    assert all(len(x["verdicts"]) == 1 for x in good)


def test_a_prompt_too_long_becomes_an_error_row(killed_and_resumed):
    rows = RunDir(killed_and_resumed['run_dir']).read_samples().to_pylist()
    errors = [r for r in rows if r["prompt_text"] == LONG_QUESTION]
    assert len(errors) == N
    assert all(r["finish_reason"] == "error" and "context length" in r["error"] and not r["accepted"] for r in errors)
    assert not [r for r in rows if r["error"] and r["prompt_text"] != LONG_QUESTION]


def test_summary_is_printed(killed_and_resumed):
    out = killed_and_resumed["out"]
    assert "run directory:" in out and "final-number" in out and "tokens/s" in out
