"""Verification: a hard time limit for every verifier, a failure as a None verdict, and the
sample stage's batches verified on Ray tasks beside the engine, in the order they came."""

from __future__ import annotations

import os
import re
import time

import pytest
import yaml

from distill.recipe import load_recipe
from distill.stages.verify import VerifyPool, verify_batch
from distill.verifiers import VERIFIERS, Verdict


def loops_on_hang(completions, references, params, ctx):
    """Test verifier: never returns for the completion "hang" (a runaway regular expression, say)."""
    out = []
    for c in completions:
        while c == "hang":
            pass
        if c == "boom":
            raise ValueError("cannot read this")
        out.append(Verdict(1.0 if c == references[0] else 0.0, f"pid {os.getpid()}"))
    return out


def pid_of(verdict: dict) -> int:
    return int(re.search(r"pid (\d+)", verdict["reason"])[1])


@pytest.fixture
def runaway(tmp_path):
    VERIFIERS.register("runaway-test")(loops_on_hang)
    yield [spec_of("runaway-test", tmp_path)]
    VERIFIERS._entries.pop("runaway-test", None)


def spec_of(name: str, tmp_path):
    """A loaded recipe's verifier spec (parameters resolved, required, threshold)."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "v", "teacher": "smollm2-135m-instruct",
                                    "prompts": {"train": [{"source": "arithmetic", "count": 1}]},
                                    "verifiers": [{"name": name}]}))
    return load_recipe(path).verifiers[0]


def test_a_runaway_or_failing_verifier_gives_none_and_the_rest_are_judged(runaway):
    verify_batch(runaway, ["warm"], ["x"], time_limit=5)  # the worker's first start is not the verifier's time
    started = time.monotonic()
    got = verify_batch(runaway, ["4", "hang", "boom", "5", None], ["4"] * 5, time_limit=2)
    took = time.monotonic() - started
    assert [v[0]["score"] for v in got[:4]] == [1.0, None, None, 0.0] and got[4] == []
    assert got[1][0]["reason"] == "verifier took over 2 s: stopped" and not got[1][0]["passed"]
    assert got[2][0]["reason"] == "verifier error: ValueError: cannot read this"
    assert pid_of(got[0][0]) != os.getpid()  # judged in the worker process, which the limit can stop
    assert took < 30


def test_without_a_limit_a_failing_verifier_still_gives_none(runaway):
    got = verify_batch(runaway, ["boom", "4"], ["4", "4"])  # in this process, the batch at once
    assert [v[0]["score"] for v in got] == [None, None]
    assert all(v[0]["reason"] == "verifier error: ValueError: cannot read this" for v in got)


def test_the_pool_verifies_batches_on_ray_tasks_in_their_order(runaway, ray_cleanup):
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    pool = VerifyPool(runaway, workers=2, time_limit=30, with_models=False)
    assert pool.on_ray
    batches = [[{"completion": str(i + j), "reference": "4", "prompt_text": "q", "finish_reason": "stop",
                 "tools": None} for j in range(3)] for i in range(6)]
    seen = []
    for i, rows in enumerate(batches):
        pool.submit(rows, i)
        seen += list(pool.ready())
    seen += list(pool.drain())
    assert [tag for tag, _ in seen] == list(range(6))  # in submission order, every batch once
    expected = [[[1.0 if str(i + j) == "4" else 0.0] for j in range(3)] for i in range(6)]
    assert [[[v["score"] for v in row] for row in got] for _, got in seen] == expected
    pids = {pid_of(v[0]) for _, got in seen for v in got}
    assert os.getpid() not in pids  # not one verdict computed in the driver


def test_workers_that_cannot_start_leave_verification_to_the_driver(runaway, ray_cleanup, monkeypatch):
    """A cluster whose CPUs the engines hold: the actors never start, and no batch waits for them."""
    import ray

    from distill.stages import verify

    monkeypatch.setattr(verify, "START_TIMEOUT_S", 2)
    ray.init(num_cpus=2, include_dashboard=False)
    pool = VerifyPool(runaway, workers=1, cpus=3, time_limit=30, with_models=False)  # more CPUs than there are
    assert pool.on_ray
    rows = [{"completion": "4", "reference": "4", "prompt_text": "q", "finish_reason": "stop", "tools": None}]
    for i in range(3):
        pool.submit(rows, i)
    got = list(pool.drain())
    assert [tag for tag, _ in got] == [0, 1, 2] and not pool.on_ray
    assert all(v[0][0]["score"] == 1.0 for _, v in got)


def test_the_sample_stage_verifies_beside_the_engine(tmp_path, monkeypatch, runaway, ray_cleanup):
    """The failure this answers: verification ran serially in the driver between the engine's batches."""
    import ray

    from distill.pipeline import run_pipeline
    from support.fakes import FakeBackend

    ray.init(num_cpus=2, include_dashboard=False)
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": "verify-beside", "teacher": "smollm2-135m-instruct",
        "prompts": {"train": [{"source": "arithmetic", "count": 6, "seed": 3}]},
        "sampling": {"n": 2, "batch_size": 4}, "verifiers": [{"name": "runaway-test"}],
        "verification": {"workers": 2}, "tracking": {"wandb": "disabled"}}))
    run, summary = run_pipeline(load_recipe(path), until="sample", backend=FakeBackend())
    samples = run.files.read_samples().to_pylist()
    assert len(samples) == 12
    pids = {pid_of(s["verdicts"][0]) for s in samples}
    assert os.getpid() not in pids
    assert summary["sample"].samples_new == 12


def test_verification_placement_leaves_the_run_id_and_a_limit_changes_it(tmp_path):
    def run_id(**verification):
        path = tmp_path / "r.yaml"
        data = {"name": "v", "teacher": "smollm2-135m-instruct",
                "prompts": {"train": [{"source": "arithmetic", "count": 1}]}}
        if verification:
            data["verification"] = verification
        path.write_text(yaml.safe_dump(data))
        recipe = load_recipe(path)
        return recipe.content_hash(), recipe.samples_key()

    plain = run_id()
    assert run_id(workers=0, cpus_per_worker=2) == plain
    changed = run_id(time_limit_s=5)
    assert changed[0] != plain[0] and changed[1] != plain[1]


@pytest.fixture
def ray_cleanup():
    yield
    import ray

    ray.shutdown()
