"""The vLLM backend's engine arguments: teacher defaults, recipe overrides, CPU needs."""

from __future__ import annotations

import json

import pytest

from distill.backends import vllm_ray
from distill.teachers import load_teacher


@pytest.fixture
def cpu_only(monkeypatch):
    monkeypatch.setattr(vllm_ray, "has_cuda", lambda: False)
    monkeypatch.setattr(vllm_ray, "cpu_has_bf16", lambda: True)


@pytest.mark.parametrize("native_bf16, overrides, dtype", [
    (True, {}, "bfloat16"),
    (False, {}, "float32"),  # emulated bf16 is several times slower than float32
    (False, {"dtype": "bfloat16"}, "bfloat16"),  # the recipe's choice wins
])
def test_a_cpu_without_bf16_arithmetic_serves_in_float32(monkeypatch, native_bf16, overrides, dtype):
    monkeypatch.setattr(vllm_ray, "has_cuda", lambda: False)
    monkeypatch.setattr(vllm_ray, "cpu_has_bf16", lambda: native_bf16)
    assert vllm_ray.engine_kwargs(load_teacher("smollm2-135m-instruct"), overrides, seed=0)["dtype"] == dtype


def test_teacher_defaults_then_recipe_overrides(cpu_only):
    teacher = load_teacher("smollm2-135m-instruct")
    kwargs = vllm_ray.engine_kwargs(teacher, {"max_model_len": 1024, "enforce_eager": False}, seed=3)
    assert kwargs["dtype"] == "bfloat16" and kwargs["seed"] == 3
    assert kwargs["max_model_len"] == 1024 and kwargs["enforce_eager"] is False  # the recipe wins


def test_a_structured_outputs_config_mapping_reaches_vllm_as_its_config(cpu_only):
    from vllm.config import StructuredOutputsConfig

    overrides = {"structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}
    kwargs = vllm_ray.engine_kwargs(load_teacher("smollm2-135m-instruct"), overrides, seed=0)
    engine = vllm_ray.vllm_engine_kwargs(kwargs)
    assert isinstance(engine["structured_outputs_config"], StructuredOutputsConfig)
    assert engine["structured_outputs_config"].disable_any_whitespace is True
    assert kwargs["structured_outputs_config"] == overrides["structured_outputs_config"]  # lineage keeps the mapping
    json.dumps(kwargs)


def test_cpu_defaults_avoid_the_known_vllm_cpu_traps(cpu_only):
    kwargs = vllm_ray.engine_kwargs(load_teacher("smollm2-135m-instruct"), {}, seed=0)
    assert kwargs["enable_chunked_prefill"] is False  # seeded sampling + split prefill crashes vLLM-cpu
    assert kwargs["gpu_memory_utilization"] < 0.92


def test_cpu_defaults_let_the_samples_of_a_prompt_share_its_prefill(cpu_only):
    teacher = load_teacher("smollm2-135m-instruct")
    kwargs = vllm_ray.engine_kwargs(teacher, {}, seed=0)
    # Whole blocks are what prefix caching shares: a block must be shorter than a prompt.
    assert kwargs["block_size"] == 32 and kwargs["max_num_seqs"] == 256
    kwargs = vllm_ray.engine_kwargs(teacher, {"block_size": 128, "max_num_seqs": 64}, seed=0)
    assert kwargs["block_size"] == 128 and kwargs["max_num_seqs"] == 64  # the recipe wins


def test_a_sharded_teacher_is_served_whole_on_a_cpu(cpu_only, caplog):
    kwargs = vllm_ray.engine_kwargs(load_teacher("deepseek-r1"), {}, seed=0)
    assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"]) == (1, 1)
    assert "unsharded" in caplog.text


def test_on_a_gpu_the_teacher_sharding_is_kept(monkeypatch):
    monkeypatch.setattr(vllm_ray, "has_cuda", lambda: True)
    kwargs = vllm_ray.engine_kwargs(load_teacher("deepseek-r1"), {"enable_prefix_caching": False}, seed=0)
    assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"]) == (8, 2)
    assert "enable_chunked_prefill" not in kwargs and kwargs["enable_prefix_caching"] is False
    assert "block_size" not in kwargs and "max_num_seqs" not in kwargs  # vLLM's GPU defaults


@pytest.mark.parametrize("completion_tokens, prompt_tokens, last_token, expected", [
    (10, 20, 5, "stop"),      # ended before the budget: an end-of-sequence token or a stop string
    (16, 20, 5, "length"),    # the max_tokens budget ran out
    (16, 20, 2, "stop"),      # the budget's last token was the end-of-sequence token
    (12, 500, 5, "length"),   # the context (max_model_len 512) ran out first
])
def test_finish_reason_is_derived_as_vllm_defines_it(completion_tokens, prompt_tokens, last_token, expected):
    backend = object.__new__(vllm_ray.VLLMRayBackend)
    backend.kwargs, backend.eos_ids = {"max_model_len": 512}, {2}
    row = {"work_id": "p:0", "text": "x", "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
           "last_token": last_token, "error": ""}
    assert backend._result(row, {"p:0": 16})["finish_reason"] == expected


def test_an_engine_error_becomes_an_error_result():
    backend = object.__new__(vllm_ray.VLLMRayBackend)
    backend.kwargs, backend.eos_ids = {}, {2}
    out = backend._result({"work_id": "p:1", "__inference_error__": "ValueError: too long", "replica": "actor a"},
                          {"p:1": 16})
    assert out == {"work_id": "p:1", "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                   "finish_reason": "error", "error": "ValueError: too long", "replica": "actor a"}


def test_a_missing_error_value_from_pandas_is_no_error():
    backend = object.__new__(vllm_ray.VLLMRayBackend)
    backend.kwargs, backend.eos_ids = {}, {2}
    row = {"work_id": "p:0", "text": "x", "prompt_tokens": 3, "completion_tokens": 4, "last_token": 2,
           "error": float("nan"), "__inference_error__": float("nan")}
    assert backend._result(row, {"p:0": 16})["error"] == ""


def test_engine_rows_are_tagged_with_the_replica_that_answered(monkeypatch):
    import asyncio

    from distill.backends import vllm_ray

    class EngineUDF:  # stands in for Ray Data LLM's engine stage: an async generator of rows
        async def udf(self, batch):
            for row in batch:
                yield {"i": row}

    monkeypatch.setattr(vllm_ray, "replica_name", lambda: "actor 1234abcd (pid 7) on node feed0001")
    tagged = vllm_ray._tagging(EngineUDF)

    async def collect():
        return [row async for row in tagged().udf([1, 2])]

    assert asyncio.run(collect()) == [{"i": 1, "replica": "actor 1234abcd (pid 7) on node feed0001"},
                                      {"i": 2, "replica": "actor 1234abcd (pid 7) on node feed0001"}]
    assert tagged.__name__ == "EngineUDF" and issubclass(tagged, EngineUDF)

    class Processor:
        stages = {"vLLMEngineStage": type("Stage", (), {"fn": EngineUDF})()}

    processor = Processor()
    assert vllm_ray.tag_replicas(processor) and issubclass(processor.stages["vLLMEngineStage"].fn, EngineUDF)
    assert processor.stages["vLLMEngineStage"].fn is not EngineUDF
    assert not vllm_ray.tag_replicas(type("Other", (), {"stages": {}})())


def test_tagging_a_real_processor_keeps_its_engine_on_cpus(tmp_path):
    """The engine stage's resources as Ray Data LLM resolved them survive the swap (re-validating
    the stage would lose its placement group and ask for a GPU)."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    from distill.backends import vllm_ray

    config = vLLMEngineProcessorConfig(model_source=str(tmp_path), engine_kwargs={}, concurrency=2, batch_size=4,
                                       placement_group_config={"bundles": [{"CPU": 1}]}, tokenize_stage=False,
                                       detokenize_stage=False, chat_template_stage={"num_cpus": 0.25})
    processor = build_processor(config)
    stage = processor.stages[vllm_ray.ENGINE_STAGE]
    before = dict(stage.map_batches_kwargs)
    assert vllm_ray.tag_replicas(processor)
    assert stage.map_batches_kwargs == before and "num_gpus" not in before and before["num_cpus"] == 1
    assert stage.fn.__mro__[1].__module__.startswith("ray.llm")


def test_custom_resources_per_replica_go_into_its_placement():
    backend = object.__new__(vllm_ray.VLLMRayBackend)
    backend.cpus_per_replica, backend.resources_per_replica = 2, {"worker": 1}
    backend.kwargs = {"tensor_parallel_size": 4, "pipeline_parallel_size": 2}
    assert backend._placement(gpu=False) == {"bundles": [{"CPU": 2, "worker": 1}]}
    bundles = backend._placement(gpu=True)["bundles"]
    assert len(bundles) == 8 and all(b["GPU"] == 1 for b in bundles)  # a GPU per TP x PP worker
    assert [b.get("worker", 0) for b in bundles] == [1] + [0] * 7  # counted once per replica
    backend.resources_per_replica = {}
    assert backend._placement(gpu=True) is None  # Ray Data LLM's own bundles
    assert backend._placement(gpu=False) == {"bundles": [{"CPU": 2}]}


def test_replicas_that_cannot_all_start_in_time_fail_the_run_with_what_to_change(tiny_model, tmp_path, monkeypatch):
    """cluster.wait_for_replicas_s: Ray Data waits for the whole engine pool, and a cluster that
    cannot hold it ends the run with a message naming the setting (not a bare Ray timeout)."""
    import ray

    from support.models import write_tiny_teacher

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    teacher = load_teacher(str(write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)))
    # Each engine asks for a resource no node has: the pool can never start.
    backend = vllm_ray.VLLMRayBackend(teacher, {}, seed=0, replicas=2, resources_per_replica={"absent_node": 1},
                                      wait_for_replicas_s=2, batch_size=2)
    requests = [{"work_id": f"w{i}", "messages": [{"role": "user", "content": "1+1?"}],
                 "sampling_params": {"max_tokens": 4, "temperature": 0.0}} for i in range(4)]
    ray.shutdown()  # building a processor (the test above) starts a default Ray by itself
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with pytest.raises(vllm_ray.ReplicasDidNotStart, match=r"2 engine replicas .* within cluster.wait_for_replicas_s=2 s.*absent_node"):
            list(backend.generate(requests))
        assert ray.data.DataContext.get_current().wait_for_min_actors_s == 2
    finally:
        ray.shutdown()
