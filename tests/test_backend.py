"""The vLLM backend's engine arguments: teacher defaults, recipe overrides, CPU needs."""

from __future__ import annotations

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


def test_cpu_defaults_avoid_the_known_vllm_cpu_traps(cpu_only):
    kwargs = vllm_ray.engine_kwargs(load_teacher("smollm2-135m-instruct"), {}, seed=0)
    assert kwargs["enable_chunked_prefill"] is False  # seeded sampling + split prefill crashes vLLM-cpu
    assert kwargs["gpu_memory_utilization"] < 0.92


def test_a_sharded_teacher_is_served_whole_on_a_cpu(cpu_only, caplog):
    kwargs = vllm_ray.engine_kwargs(load_teacher("deepseek-r1"), {}, seed=0)
    assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"]) == (1, 1)
    assert "unsharded" in caplog.text


def test_on_a_gpu_the_teacher_sharding_is_kept(monkeypatch):
    monkeypatch.setattr(vllm_ray, "has_cuda", lambda: True)
    kwargs = vllm_ray.engine_kwargs(load_teacher("deepseek-r1"), {"enable_prefix_caching": False}, seed=0)
    assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"]) == (8, 2)
    assert "enable_chunked_prefill" not in kwargs and kwargs["enable_prefix_caching"] is False


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
    out = backend._result({"work_id": "p:1", "__inference_error__": "ValueError: too long"}, {"p:1": 16})
    assert out == {"work_id": "p:1", "text": None, "prompt_tokens": 0, "completion_tokens": 0,
                   "finish_reason": "error", "error": "ValueError: too long"}


def test_a_missing_error_value_from_pandas_is_no_error():
    backend = object.__new__(vllm_ray.VLLMRayBackend)
    backend.kwargs, backend.eos_ids = {}, {2}
    row = {"work_id": "p:0", "text": "x", "prompt_tokens": 3, "completion_tokens": 4, "last_token": 2,
           "error": float("nan"), "__inference_error__": float("nan")}
    assert backend._result(row, {"p:0": 16})["error"] == ""
