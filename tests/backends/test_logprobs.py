"""The teacher's top-k log-probabilities: the stored layout round-trips, the vLLM backend's and the
HTTP backend's results carry them, and a real engine's are stored beside the samples."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml

from distill.backends import vllm_ray
from distill.backends.http_wire import parse_completion, parse_logprobs
from distill.run import RunDir
from distill.schema import LOGPROB_FLOOR
from distill.training.logits import PRECISION, TeacherTokens, decode, encode, table


def tokens(n, k, seed=0, vocab=49152):
    """Random tokens with a peaked distribution per position (from 4096 candidates, as log-softmax)."""
    rng = np.random.default_rng(seed)
    z = rng.gumbel(size=(n, 4096)) * 4
    lp = (z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True))
    top_lp = -np.sort(-lp, axis=1)[:, :k].astype(np.float32)
    return TeacherTokens(rng.integers(0, vocab, size=n), top_lp[:, 0].copy(), rng.integers(0, vocab, size=(n, k)),
                         top_lp)


def roundtrip(t: TeacherTokens) -> TeacherTokens:
    row = table([("s1", t)]).to_pylist()[0]  # through Arrow, as a file holds it
    assert isinstance(row["top_logprobs"], bytes)
    return decode(row)


@pytest.mark.parametrize("k", [1, 8, 20])
def test_stored_logprobs_decode_within_the_stored_precision(k):
    t = tokens(200, k, seed=k)
    back = roundtrip(t)
    assert (back.n, back.k) == (200, k)
    assert np.array_equal(back.token_ids, t.token_ids) and np.array_equal(back.top_ids, t.top_ids)
    inside = t.top_logprobs >= LOGPROB_FLOOR
    assert np.abs(back.top_logprobs - t.top_logprobs)[inside].max() <= PRECISION + 1e-6
    assert np.all(back.top_logprobs[~inside] == LOGPROB_FLOOR)
    assert np.abs(back.token_logprobs - np.maximum(t.token_logprobs, LOGPROB_FLOOR)).max() <= PRECISION + 1e-6


def test_minus_infinity_and_tiny_logprobs_are_clamped_to_the_floor():
    t = TeacherTokens(np.array([5, 6]), np.array([-np.inf, -1e-9], np.float32), np.array([[5, 9, 7], [6, 1, 2]]),
                      np.array([[-0.1, -40.0, -np.inf], [1e-7, -2.5, np.nan]], np.float32))
    back = roundtrip(t)
    assert back.token_logprobs.tolist() == [LOGPROB_FLOOR, 0.0]
    assert back.top_logprobs[0, 1:].tolist() == [LOGPROB_FLOOR, LOGPROB_FLOOR]
    assert back.top_logprobs[1, 0] == 0.0 and abs(back.top_logprobs[1, 1] + 2.5) <= PRECISION
    assert back.top_logprobs[1, 2] == LOGPROB_FLOOR  # NaN: no information, the floor


def test_an_unordered_topk_is_stored_most_likely_first_with_its_ids():
    t = TeacherTokens(np.array([3]), np.array([-1.0], np.float32), np.array([[3, 8, 1]]),
                      np.array([[-1.0, -0.2, -3.0]], np.float32))
    back = roundtrip(t)
    assert back.top_ids.tolist() == [[8, 3, 1]]
    np.testing.assert_allclose(back.top_logprobs, [[-0.2, -1.0, -3.0]], atol=PRECISION)


def test_an_empty_completion_and_ids_beyond_uint16():
    empty = TeacherTokens(np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 8), np.int64),
                          np.zeros((0, 8), np.float32))
    back = roundtrip(empty)
    assert (back.n, back.k) == (0, 8) and back.top_ids.shape == (0, 8)
    big = tokens(10, 4, vocab=200_000)
    big = TeacherTokens(big.token_ids, big.token_logprobs, big.top_ids.copy(), big.top_logprobs)
    big.top_ids[0, 0] = 151_000
    assert encode(big)["id_bytes"] == 4
    assert np.array_equal(roundtrip(big).top_ids, big.top_ids)
    assert encode(tokens(10, 4))["id_bytes"] == 2


def test_the_stored_layout_is_compact():
    t = tokens(1000, 8)
    row = encode(t)
    assert len(row["top_ids"]) + len(row["top_logprobs"]) == 1000 * 8 * 4  # 2 bytes each before compression


def test_a_generated_token_in_its_topk_is_stored_as_its_place():
    top = np.array([[-0.2, -1.0]] * 3, np.float32)
    t = TeacherTokens(np.array([8, 3, 50]), np.array([-0.2, -1.0, -6.0], np.float32), np.array([[8, 3]] * 3), top)
    row = encode(t)
    assert list(row["token_ranks"]) == [0, 1, 255]
    assert np.frombuffer(row["token_ids"], "<u2").tolist() == [50]  # only the one outside the top-k, whole
    back = decode(row)
    assert back.token_ids.tolist() == [8, 3, 50]
    np.testing.assert_allclose(back.token_logprobs, [-0.2, -1.0, -6.0], atol=PRECISION)
    # in the top-k with another log-probability than its entry's: stored whole, not lost
    odd = TeacherTokens(np.array([8]), np.array([-3.0], np.float32), np.array([[8, 3]]), top[:1])
    assert list(encode(odd)["token_ranks"]) == [255]
    np.testing.assert_allclose(roundtrip(odd).token_logprobs, [-3.0], atol=PRECISION)


def test_logprob_parts_are_written_beside_their_samples_part_and_left_over_ones_are_ignored(tmp_path):
    files = RunDir(tmp_path)
    part = files.write_logprob_part(["p:0", "p:1"], [("s0", tokens(5, 3)), ("s1", tokens(7, 3, seed=1))])
    assert part == files.logprob_part(files.sample_part(["p:1", "p:0"]))
    assert files.read_logprobs() == ({}, [])  # no samples part yet (a kill between the two writes)
    files.sample_part(["p:0", "p:1"]).parent.mkdir(parents=True, exist_ok=True)
    files.sample_part(["p:0", "p:1"]).write_bytes(b"")  # the samples part now exists
    rows, read = files.read_logprobs({"s1"})
    assert list(rows) == ["s1"] and read == [part] and decode(rows["s1"]).n == 7


# -- the vLLM backend: Ray Data LLM's rows to result rows -------------------------------------------

def engine_row(sampled=(11, 12), logprobs=True):
    """A row as Ray Data LLM's engine stage gives it: per generated token, {id: Logprob as a dict}
    with the top-k and the sampled token (k + 1 entries when the sampled one is not in the top-k)."""
    row = {"work_id": "p:0", "generated_text": "ab", "generated_tokens": list(sampled), "num_input_tokens": 5,
           "num_generated_tokens": len(sampled), "time_taken_llm": 0.5}
    if logprobs:
        row["logprobs"] = [
            {11: {"logprob": -0.1, "rank": 1, "decoded_token": "a"},
             40: {"logprob": -2.5, "rank": 2, "decoded_token": "x"}},
            {30: {"logprob": -0.3, "rank": 1, "decoded_token": "y"},
             31: {"logprob": -1.9, "rank": 2, "decoded_token": "z"},
             12: {"logprob": -4.0, "rank": 7, "decoded_token": "b"}},
        ]
    return row


def backend():
    b = object.__new__(vllm_ray.VLLMRayBackend)
    b.kwargs, b.eos_ids = {}, {2}
    return b


def test_engine_logprobs_become_the_result_rows_topk_and_sampled_logprobs():
    flat = vllm_ray._postprocess(engine_row())
    json.dumps(flat)  # plain lists: Arrow holds them, nothing is pickled
    result = backend()._result(flat, {"p:0": 16}, {"p:0": 2})
    assert result["logprobs"] == {"token_ids": [11, 12], "token_logprobs": [-0.1, -4.0],
                                  "top_ids": [[11, 40], [30, 31]], "top_logprobs": [[-0.1, -2.5], [-0.3, -1.9]]}
    t = TeacherTokens.from_lists(result["logprobs"], 2)
    assert t.n == 2 and t.k == 2


def test_rows_without_logprobs_are_as_before():
    flat = vllm_ray._postprocess(engine_row(logprobs=False))
    assert "logprob_ids" not in flat and "token_ids" not in flat
    assert "logprobs" not in backend()._result(flat, {"p:0": 16})
    assert "logprobs" not in backend()._result(flat, {"p:0": 16}, {"p:0": None})


def test_a_topk_shorter_than_asked_for_is_not_kept(caplog):
    result = backend()._result(vllm_ray._postprocess(engine_row()), {"p:0": 16}, {"p:0": 3})
    assert result["logprobs"] is None and "no usable top-3 log-probabilities" in caplog.text


def test_the_engine_actor_hands_logprobs_over_flat(monkeypatch):
    import asyncio

    class EngineUDF:
        async def udf(self, batch):
            for row in batch:
                yield row

    monkeypatch.setattr(vllm_ray, "replica_name", lambda: "actor 1")
    tagged = vllm_ray._tagging(EngineUDF)

    async def collect():
        return [row async for row in tagged().udf([engine_row()])]

    [row] = asyncio.run(collect())
    assert "logprobs" not in row and row["logprob_ids"] == [[11, 40], [30, 31, 12]] and row["replica"] == "actor 1"
    assert vllm_ray._postprocess(row)["logprob_values"] == [[-0.1, -2.5], [-0.3, -1.9, -4.0]]


# -- the HTTP backend ------------------------------------------------------------------------------

def http_backend(**endpoint):
    from distill.backends.openai_http import OpenAIHTTPBackend
    from distill.teachers import Teacher

    return OpenAIHTTPBackend(Teacher.model_validate({
        "id": "served", "model": "org/m", "revision": "r", "licence": "apache-2.0", "params_b": 1,
        "endpoint": {"base_url": "http://127.0.0.1:9/v1", **endpoint}}))


def test_an_http_request_asks_for_topk_logprobs_by_token_id():
    request = {"work_id": "p:0", "messages": [{"role": "user", "content": "q"}],
               "sampling_params": {"temperature": 1.0, "max_tokens": 8, "logprobs": 5}}
    body = http_backend().body(request)
    assert (body["logprobs"], body["top_logprobs"], body["return_tokens_as_token_ids"]) == (True, 5, True)
    plain = http_backend(send_extra_params=False).body(request)
    assert (plain["logprobs"], plain["top_logprobs"]) == (True, 5) and "return_tokens_as_token_ids" not in plain
    assert "logprobs" not in http_backend().body({**request, "sampling_params": {"max_tokens": 8}})


def completion_with(content):
    return {"choices": [{"message": {"content": "ab"}, "finish_reason": "stop", "logprobs": {"content": content}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


def test_an_http_response_with_token_ids_gives_the_topk():
    content = [
        {"token": "token_id:11", "logprob": -0.1, "top_logprobs": [{"token": "token_id:40", "logprob": -2.5},
                                                                  {"token": "token_id:11", "logprob": -0.1}]},
        {"token": "token_id:12", "logprob": -4.0, "top_logprobs": [{"token": "token_id:30", "logprob": -0.3},
                                                                  {"token": "token_id:31", "logprob": -1.9}]},
    ]
    row = parse_completion(completion_with(content), 2)
    assert row["logprobs"] == {"token_ids": [11, 12], "token_logprobs": [-0.1, -4.0],
                               "top_ids": [[11, 40], [30, 31]], "top_logprobs": [[-0.1, -2.5], [-0.3, -1.9]]}
    assert "logprobs" not in parse_completion(completion_with(content))  # not asked for: not looked at


def test_an_http_response_naming_tokens_by_text_gives_none():
    content = [{"token": " the", "logprob": -0.1, "top_logprobs": [{"token": " the", "logprob": -0.1}]}]
    assert parse_logprobs({"content": content}, 1) is None
    assert parse_logprobs(None, 1) is None
    assert parse_logprobs({"content": [{"token": "token_id:1", "logprob": -0.1, "top_logprobs": []}]}, 1) is None


# -- a real engine -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_real_engine_keeps_the_top8_of_every_generated_token(tiny_model, tmp_path, monkeypatch):
    from distill.pipeline import run_pipeline
    from distill.recipe import load_recipe
    from support.models import write_tiny_teacher

    monkeypatch.chdir(tmp_path)
    write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "logprobs",
        "teacher": {"id": "tiny.yaml", "engine_args": {"gpu_memory_utilization": 0.1}},
        "prompts": {"train": [{"source": "arithmetic", "count": 4, "seed": 3}]},
        "sampling": {"n": 1, "temperature": 1.0, "max_tokens": 16, "seed": 5, "logprobs": 8},
        "tracking": {"wandb": "disabled"},
    }))
    run, _ = run_pipeline(load_recipe(tmp_path / "r.yaml"), until="sample")
    samples = run.files.read_samples(["sample_id", "completion_tokens", "error"]).to_pylist()
    assert len(samples) == 4 and not [s["error"] for s in samples if s["error"]]
    stored, read = run.files.read_logprobs()
    assert set(stored) == {s["sample_id"] for s in samples} and read
    for s in samples:
        t = decode(stored[s["sample_id"]])
        assert (t.n, t.k) == (s["completion_tokens"], 8) and t.n > 0
        assert np.all(np.diff(t.top_logprobs, axis=1) <= 0)  # most likely first
        assert np.all(np.exp(t.top_logprobs).sum(1) <= 1 + 8 * PRECISION)
        for i in range(t.n):  # the sampled token: among the top-8 with the same value, or below them all
            hit = np.flatnonzero(t.top_ids[i] == t.token_ids[i])
            if hit.size:
                assert abs(t.top_logprobs[i, hit[0]] - t.token_logprobs[i]) <= 2 * PRECISION
            else:
                assert t.token_logprobs[i] <= t.top_logprobs[i, -1] + 2 * PRECISION
    assert math.isfinite(float(t.top_logprobs.sum()))


@pytest.mark.slow
def test_requests_with_and_without_logprobs_share_a_batch_of_a_real_engine(tiny_model, tmp_path, monkeypatch):
    """The teacher's evaluation rides along with sampling.logprobs samples: one batch then holds
    requests with k and without. As a column with gaps, pandas made k a float (8.0), the engine's
    request decoder refused it, its input thread died and the run waited for ever."""
    import threading

    import ray

    from distill.backends import vllm_ray
    from distill.teachers import load_teacher
    from support.models import write_tiny_teacher

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    teacher = load_teacher(str(write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)))
    backend = vllm_ray.VLLMRayBackend(teacher, {"gpu_memory_utilization": 0.1}, seed=0, batch_size=4)
    requests = [{"work_id": f"w{i}", "messages": [{"role": "user", "content": f"{i} + 1?"}],
                 "sampling_params": {"max_tokens": 6, "temperature": 1.0, "seed": i,
                                     **({"logprobs": 8} if i % 2 else {})}} for i in range(4)]
    assert [r["sampling_params"].get("logprobs") for r in vllm_ray.uniform_logprobs(requests)] == [0, 8, 0, 8]
    results: list = []
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        worker = threading.Thread(target=lambda: results.extend(r for b in backend.generate(requests) for r in b),
                                  daemon=True)
        worker.start()
        worker.join(timeout=600)
        assert not worker.is_alive(), "the engine stopped answering"
    finally:
        ray.shutdown()
    by_id = {r["work_id"]: r for r in results}
    assert sorted(by_id) == ["w0", "w1", "w2", "w3"] and not [r for r in results if r["error"]]
    assert all(by_id[w].get("logprobs") is None for w in ("w0", "w2"))  # asked for none: none kept
    for w in ("w1", "w3"):
        assert by_id[w]["logprobs"] is not None
