"""sampling.reproducible: batches formed by the engine's own steps on CPUs, batch-invariant
kernels on GPUs."""

from __future__ import annotations

import multiprocessing
import os
import threading

import pytest

from distill.backends import vllm_fixed, vllm_ray


def test_a_grammar_and_logprobs_reach_vllms_sampling_params():
    params = vllm_fixed.sampling_params({"max_tokens": 5, "seed": 3, "logprobs": 8, "temperature": 0.7,
                                         "structured_outputs": {"json": '{"type": "object"}'}})
    assert (params.max_tokens, params.seed, params.logprobs) == (5, 3, 8)
    assert params.structured_outputs.json == '{"type": "object"}'
    assert params.output_kind.name == "FINAL_ONLY"  # each result once, when finished
    assert vllm_fixed.sampling_params({"max_tokens": 5}).structured_outputs is None


def test_the_recipe_setting_reaches_the_backend_and_its_lineage(tiny_model, tmp_path, monkeypatch):
    from distill.teachers import load_teacher
    from support.models import write_tiny_teacher

    monkeypatch.setattr(vllm_ray, "has_cuda", lambda: False)
    teacher = load_teacher(str(write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)))
    assert "batching" not in vllm_ray.VLLMRayBackend(teacher, {}, seed=0).describe()
    assert vllm_ray.VLLMRayBackend(teacher, {}, seed=0, reproducible=True).describe()["batching"] == "step-loop"
    monkeypatch.setattr(vllm_ray, "has_cuda", lambda: True)
    assert vllm_ray.VLLMRayBackend(teacher, {}, seed=0, reproducible=True).describe()["batching"] == "batch-invariant"


def test_the_recipe_setting_reaches_every_backend_the_run_makes(tiny_model, tmp_path, monkeypatch):
    import yaml

    from distill import pipeline
    from distill.recipe import load_recipe
    from support.models import write_tiny_teacher

    monkeypatch.chdir(tmp_path)
    write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)
    made = []

    class Factory:
        fn = staticmethod(lambda model, options: made.append(options.reproducible))

    monkeypatch.setattr(pipeline.BACKENDS, "get", lambda name: Factory)
    for value in (None, True):
        sampling = {"n": 1, "max_tokens": 8, **({"reproducible": value} if value is not None else {})}
        (tmp_path / "r.yaml").write_text(yaml.safe_dump({
            "name": "repro", "teacher": {"id": "tiny.yaml"}, "sampling": sampling,
            "prompts": {"train": [{"source": "arithmetic", "count": 2, "seed": 3}]}}))
        pipeline.make_backend(pipeline.open_run(load_recipe(tmp_path / "r.yaml")))
    assert made == [False, True]


def _burn(stop):
    os.nice(10)  # perturbs the engine's timing without starving its spinning threads
    while not stop.is_set():
        sum(i * i for i in range(10_000))


@pytest.mark.slow
def test_a_step_loop_gives_the_same_samples_on_a_quiet_and_a_loaded_machine(tiny_model, tmp_path, monkeypatch):
    """A random tiny model's next-token distribution is nearly flat, so seeded samples meet
    near-ties at almost every token: a different batch composition would show at once. The same
    requests, generated with the cores idle and then with another process burning one, give the
    same texts and the same top-k log-probabilities, in batches of batch_size."""
    import ray

    from distill.teachers import load_teacher
    from support.models import write_tiny_teacher

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setattr(vllm_ray, "has_cuda", lambda: False)
    teacher = load_teacher(str(write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)))
    # Room for 4 running sequences: 8 queued at once, the rest admitted as others finish.
    backend = vllm_ray.VLLMRayBackend(teacher, {"gpu_memory_utilization": 0.1, "max_num_seqs": 4}, seed=0,
                                      batch_size=5, reproducible=True)
    requests = [{"work_id": f"w{i}", "messages": [{"role": "user", "content": f"What is {i} + {i % 3}?"}],
                 "sampling_params": {"max_tokens": 12, "temperature": 1.0, "seed": 100 + i,
                                     **({"logprobs": 4} if i % 2 else {})}} for i in range(12)]

    def generate() -> list[list[dict]]:
        batches: list = []
        worker = threading.Thread(target=lambda: batches.extend(backend.generate(requests)), daemon=True)
        worker.start()
        worker.join(timeout=600)
        assert not worker.is_alive(), "the engine stopped answering"
        return batches

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        quiet = generate()
        stop = multiprocessing.Event()
        burner = multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
        burner.start()
        try:
            loaded = generate()
        finally:
            stop.set()
            burner.join(timeout=10)
        # Ray starts an actor with one OpenMP thread per CPU it reserved; the engine takes every core.
        engine = ray.remote(vllm_fixed.StepLoopEngine).options(num_cpus=1).remote(
            backend.model, vllm_ray.vllm_engine_kwargs(backend.kwargs), vllm_ray.cpu_engine_env())
        assert ray.get(engine.ready.remote(), timeout=300)["threads"] == len(os.sched_getaffinity(0))
    finally:
        ray.shutdown()
    assert [len(b) for b in quiet] == [5, 5, 2]
    flat = [r for b in quiet for r in b]
    assert not [r for r in flat if r["error"]] and all(r["completion_tokens"] > 0 for r in flat)
    assert all((r.get("logprobs") is not None) == (int(r["work_id"][1:]) % 2 == 1) for r in flat)
    assert len({r["text"] for r in flat}) > 6  # seeded samples of different prompts: mostly different texts
    # The steps alone decide what finishes when: the same batches in the same order.
    assert [[r["work_id"] for r in b] for b in quiet] == [[r["work_id"] for r in b] for b in loaded]
    again = {r["work_id"]: r for b in loaded for r in b}
    for a in flat:
        b = again[a["work_id"]]
        assert (a["work_id"], a["text"], a["completion_tokens"], a["finish_reason"]) == \
               (b["work_id"], b["text"], b["completion_tokens"], b["finish_reason"])
        assert a.get("logprobs") == b.get("logprobs")
