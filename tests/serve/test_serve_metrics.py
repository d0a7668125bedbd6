"""The router's metrics: what it records for a student's answer, a failed cascade, the llm policy and
a failing student (through a fake recorder), the reason kinds, and the Ray Serve metrics objects."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from conftest import FakeStudent as Student, support_request, weather_request
from distill.serve import metrics
from distill.serve.config import ServeConfig
from distill.serve.metrics import CALLS, FALLBACKS, LATENCY, VERIFIER_FAILURES, reason_kind
from distill.serve.router import Router, UpstreamError
from distill.usage.classifier import RequestClassifier

GOOD_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


class FakeRecorder:
    def __init__(self):
        self.counts, self.observed = Counter(), []

    def count(self, name, tags):
        self.counts[(name, tuple(sorted(tags.items())))] += 1

    def observe(self, name, value, tags):
        self.observed.append((name, value, tags))

    def of(self, name) -> dict:
        return {dict(tags).get("reason") or dict(tags).get("route") or dict(tags)["cluster"]: n
                for (metric, tags), n in self.counts.items() if metric == name}


class Upstream:
    def __init__(self, fail=None):
        self.fail = fail

    async def chat(self, request):
        if self.fail:
            raise self.fail
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "big-llm-2025",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the LLM"},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 0.125  # each reading a little later: a call takes 125 ms between its two readings
        return self.now


def routed(classifier_file, student, policy="cascade", upstream=None):
    cfg = ServeConfig.model_validate({
        "classifier": "clf.json", "fallback": {"base_url": "http://127.0.0.1:1/v1", "model": "big-llm"},
        "students": [{"cluster": "c0", "name": "weather-student", "model": "m", "policy": policy,
                      "verifier": "tool-call"}], "breaker": {"failures": 2, "open_seconds": 30}})
    recorder = FakeRecorder()
    router = Router(cfg, RequestClassifier.load(classifier_file), {"weather-student": Student(student)},
                    upstream or Upstream(), None, Clock(), recorder)
    return router, recorder


def calls(recorder) -> Counter:
    return Counter({tags: n for (name, tags), n in recorder.counts.items() if name == CALLS})


def test_a_students_answer_counts_one_call_and_no_fallback(classifier_file):
    router, rec = routed(classifier_file, GOOD_CALL)
    for _ in range(3):
        assert asyncio.run(router.handle(weather_request())).route == "weather-student"
    assert calls(rec) == Counter({(("cluster", "c0"), ("model", "weather-student"), ("route", "weather-student"),
                                   ("status", "200")): 3})
    assert rec.of(FALLBACKS) == {} and rec.of(VERIFIER_FAILURES) == {}
    assert rec.observed == [(LATENCY, pytest.approx(0.125), {"route": "weather-student"})] * 3


def test_a_failed_cascade_counts_the_fallback_and_the_failed_check(classifier_file):
    router, rec = routed(classifier_file, "It is sunny in Paris.")
    served = asyncio.run(router.handle(weather_request()))
    assert served.header == "llm; reason=verifier-failed"
    assert calls(rec) == Counter({(("cluster", "c0"), ("model", "big-llm-2025"), ("route", "llm"),
                                   ("status", "200")): 1})
    assert rec.of(FALLBACKS) == {"verifier_failed": 1} and rec.of(VERIFIER_FAILURES) == {"c0": 1}
    assert [(name, tags) for name, _, tags in rec.observed] == [(LATENCY, {"route": "llm"})]


def test_a_student_policy_answer_that_fails_its_check_is_a_verifier_failure_not_a_fallback(classifier_file):
    router, rec = routed(classifier_file, "It is sunny in Paris.", policy="student")
    assert asyncio.run(router.handle(weather_request())).route == "weather-student"
    assert rec.of(FALLBACKS) == {} and rec.of(VERIFIER_FAILURES) == {"c0": 1}


def test_the_llm_policy_and_unrouted_calls(classifier_file):
    router, rec = routed(classifier_file, GOOD_CALL, policy="llm")
    asyncio.run(router.handle(weather_request()))
    asyncio.run(router.handle(support_request()))  # cluster c1: no student owns it
    assert rec.of(FALLBACKS) == {"policy_llm": 1, "no_student": 1} and rec.of(VERIFIER_FAILURES) == {}
    assert sum(calls(rec).values()) == 2 and {dict(t)["route"] for t in calls(rec)} == {"llm"}
    assert {dict(t)["cluster"] for t in calls(rec)} == {"c0", "c1"}


def test_a_failing_student_and_a_failing_fallback(classifier_file):
    router, rec = routed(classifier_file, RuntimeError("replica died"), upstream=Upstream(UpstreamError("down")))
    for _ in range(3):  # two failures open the breaker
        assert asyncio.run(router.handle(weather_request())).status == 502
    assert rec.of(FALLBACKS) == {"student_error": 2, "breaker_open": 1}
    assert calls(rec) == Counter({(("cluster", "c0"), ("model", ""), ("route", "none"), ("status", "502")): 3})


def test_a_broken_recorder_does_not_fail_the_call(classifier_file):
    router, rec = routed(classifier_file, GOOD_CALL)
    rec.count = None  # calling it raises
    assert asyncio.run(router.handle(weather_request())).status == 200


def test_reason_kinds_are_a_fixed_set():
    assert reason_kind("verifier-failed") == "verifier_failed"
    assert reason_kind("student-timeout+fallback-failed") == "student_timeout"
    assert reason_kind("unsupported-field-logprobs") == reason_kind("n-above-1") == "unservable"
    assert reason_kind("something-new") == "other"
    assert set(metrics.REASON_KINDS.values()) | {"other"} == {
        "unrouted", "no_student", "policy_llm", "low_confidence", "breaker_open", "student_error",
        "student_timeout", "verifier_failed", "unservable", "other"}


def test_ray_metrics_are_made_and_recorded_without_a_ray_cluster():
    """Ray buffers the values until a metrics agent exports them; without Ray they are dropped."""
    m = metrics.RayMetrics()
    m.count(CALLS, {"route": "weather-student", "cluster": "c0", "model": "weather-student", "status": "200"})
    m.count(FALLBACKS, {"cluster": "c0", "reason": "verifier_failed"})
    m.count(VERIFIER_FAILURES, {"cluster": "c0"})
    m.observe(LATENCY, 0.2, {"route": "llm"})
    with pytest.raises(ValueError, match="Missing value for tag"):
        m.count(CALLS, {"route": "llm"})
