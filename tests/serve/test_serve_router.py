"""The routing logic with a fake student and a fake upstream: who answers each request and why,
the cascade's checks, timeouts, the circuit breaker, and what the client gets when nobody answers."""

from __future__ import annotations

import asyncio
import json

import pytest

from conftest import TOOLS, support_request, weather_request
from distill.serve.config import ServeConfig
from distill.serve.router import Answer, CircuitBreaker, Router, UpstreamError, check_answer
from distill.serve.student import assistant_message
from distill.usage.classifier import RequestClassifier

GOOD_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'


class FakeStudent:
    """Answers with the next of `texts` (an Exception is raised, "sleep" hangs)."""

    def __init__(self, *texts):
        self.texts, self.asked = list(texts), []

    async def answer(self, request):
        self.asked.append(request)
        text = self.texts.pop(0) if len(self.texts) > 1 else self.texts[0]
        if isinstance(text, Exception):
            raise text
        if text == "sleep":
            await asyncio.sleep(10)
        return Answer(text, assistant_message(text, bool(request.get("tools"))), "stop", 10, 5)


class FakeUpstream:
    def __init__(self, fail: UpstreamError | None = None):
        self.fail, self.asked = fail, []

    async def chat(self, request):
        self.asked.append(request)
        if self.fail:
            raise self.fail
        return {"id": "x", "object": "chat.completion", "created": 0, "model": "big-llm-2025",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "from the LLM"},
                             "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 3}}


class MemoryLog:
    def __init__(self):
        self.records = []

    async def append(self, record):
        self.records.append(record)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def config(policy="cascade", verifier="tool-call", **student) -> ServeConfig:
    return ServeConfig.model_validate({
        "classifier": "clf.json", "fallback": {"base_url": "http://127.0.0.1:1/v1", "model": "big-llm"},
        "students": [{"cluster": "c0", "name": "weather-student", "model": "m", "policy": policy,
                      "verifier": verifier, "timeout_seconds": 0.2, **student}],
        "breaker": {"failures": 2, "open_seconds": 30}})


def router(classifier_file, student, upstream=None, cfg=None, clock=None):
    return Router(cfg or config(), RequestClassifier.load(classifier_file), {"weather-student": student},
                  upstream or FakeUpstream(), MemoryLog(), clock or Clock())


def run(r, request):
    return asyncio.run(r.handle(request))


def test_a_valid_tool_call_is_answered_by_the_student_as_openai_tool_calls(classifier_file):
    r = router(classifier_file, FakeStudent(GOOD_CALL))
    served = run(r, weather_request())
    assert (served.status, served.route, served.reason, served.header) == (200, "weather-student", None,
                                                                            "weather-student")
    body = served.body
    assert body["model"] == "weather-student" and body["choices"][0]["finish_reason"] == "tool_calls"
    call = body["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert served.verdict["score"] == 1.0 and r.upstream.asked == []
    record = r.call_log.records[0]
    assert record["route"]["answered_by"] == "weather-student" and record["route"]["cluster"] == "c0"


@pytest.mark.parametrize("text, why", [
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"</tool_call>', "malformed JSON"),
    ('<tool_call>{"name": "get_forecast", "arguments": {"city": "Paris"}}</tool_call>', "unknown function"),
    ('<tool_call>{"name": "get_weather", "arguments": {"days": 2}}</tool_call>', "'city' missing"),
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": "two"}}</tool_call>',
     "should be integer"),
    ("It is sunny in Paris.", "no tool call"),
])
def test_a_cascade_sends_a_failing_tool_call_to_the_llm(classifier_file, text, why):
    r = router(classifier_file, FakeStudent(text))
    served = run(r, weather_request())
    assert (served.route, served.reason, served.header) == ("llm", "verifier-failed", "llm; reason=verifier-failed")
    assert served.body["model"] == "big-llm-2025"
    assert served.verdict["score"] == 0.0 and why in served.verdict["reason"]
    assert r.upstream.asked[0]["model"] == "big-llm"  # the fallback's model name goes upstream, not the client's


def test_policy_student_returns_a_failing_answer_but_logs_its_verdict(classifier_file):
    r = router(classifier_file, FakeStudent("It is sunny."), cfg=config(policy="student"))
    served = run(r, weather_request())
    assert served.route == "weather-student" and served.body["choices"][0]["message"]["content"] == "It is sunny."
    assert served.verdict["score"] == 0.0 and r.upstream.asked == []


@pytest.mark.parametrize("request_, cfg, reason", [
    (support_request(), config(), "no-student"),  # c1: a cluster without a student
    ({"messages": [{"role": "user", "content": "hello"}]}, config(), "unrouted"),
    (weather_request(), config(policy="llm"), "policy-llm"),
    (weather_request(), config(min_confidence=1.0, policy="cascade"), None),  # confidence 1.0 is not below 1.0
    ({**weather_request(), "n": 2}, config(), "n-above-1"),
    ({**weather_request(), "tool_choice": "required"}, config(), "tool-choice"),
    ({**weather_request(), "logprobs": True}, config(), "unsupported-field-logprobs"),
])
def test_who_answers_without_asking_the_student(classifier_file, request_, cfg, reason):
    student = FakeStudent(GOOD_CALL)
    served = run(router(classifier_file, student, cfg=cfg), request_)
    if reason is None:
        assert served.route == "weather-student"
    else:
        assert (served.route, served.reason) == ("llm", reason) and student.asked == []


def test_low_confidence_goes_to_the_llm(classifier_file):
    clf = RequestClassifier.load(classifier_file)
    low = type("Low", (), {"classify": lambda self, req: clf.classify(req).__class__("c0", 0.4, "centroid")})()
    r = Router(config(min_confidence=0.5), low, {"weather-student": FakeStudent(GOOD_CALL)}, FakeUpstream())
    served = asyncio.run(r.handle(weather_request()))
    assert (served.route, served.reason, served.confidence) == ("llm", "low-confidence", 0.4)


def test_the_students_max_tokens_caps_the_request(classifier_file):
    student = FakeStudent(GOOD_CALL)
    r = router(classifier_file, student, cfg=config(max_tokens=64))
    run(r, {**weather_request(), "max_tokens": 1000})
    run(r, {**weather_request(), "max_tokens": 10})
    assert [a["max_tokens"] for a in student.asked] == [64, 10]


def test_student_errors_and_timeouts_fall_back_and_open_the_breaker(classifier_file):
    clock = Clock()
    student = FakeStudent(RuntimeError("engine died"), "sleep", GOOD_CALL)
    r = router(classifier_file, student, clock=clock)
    reasons = [run(r, weather_request()).reason for _ in range(3)]
    # two failures open it (failures: 2): the third request does not reach the student
    assert reasons == ["student-error", "student-timeout", "breaker-open"] and len(student.asked) == 2
    assert r.breakers["weather-student"].state == "open"
    clock.now = 31  # open_seconds passed: one trial request goes to the student, and it answers
    served = run(r, weather_request())
    assert served.route == "weather-student" and r.breakers["weather-student"].state == "closed"


def test_a_failed_trial_opens_the_breaker_again():
    clock = Clock()
    b = CircuitBreaker(failures=3, open_seconds=10, clock=clock)
    for _ in range(3):
        assert b.allow()
        b.failure()
    assert not b.allow() and b.state == "open"
    clock.now = 10
    assert b.allow() and not b.allow()  # one trial only while half-open
    b.failure()
    assert b.state == "open" and not b.allow()
    clock.now = 25
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()


def test_verifier_failures_do_not_open_the_breaker(classifier_file):
    r = router(classifier_file, FakeStudent("no call here"))
    for _ in range(4):
        assert run(r, weather_request()).reason == "verifier-failed"
    assert r.breakers["weather-student"].state == "closed"


@pytest.mark.parametrize("fail, status", [(UpstreamError("HTTP 500: boom"), 502), (UpstreamError("timed out", 504), 504)])
def test_when_nobody_answers_the_client_gets_an_openai_error_and_the_log_keeps_it(classifier_file, fail, status):
    r = router(classifier_file, FakeStudent("no call"), FakeUpstream(fail))
    served = run(r, weather_request())
    assert served.status == status and served.route == "none"
    assert served.reason == "verifier-failed+fallback-failed"
    assert "big-llm" in served.body["error"]["message"] and served.body["error"]["type"] == "upstream_error"
    assert r.call_log.records[0]["error"]["type"] == "upstream_error" and "response" not in r.call_log.records[0]


@pytest.mark.parametrize("verifier, text, score", [
    ("json", '{"name": "Ann"}', 1.0),
    ("json", '```json\n{"name": "Ann"}\n```', 1.0),
    ("json", '["Ann"]', 0.0),
    ("json", "Ann", 0.0),
    ("tool-call", GOOD_CALL, 1.0),
    ("tool-call", '{"name": "get_weather", "arguments": {"city": "Oslo"}}', 1.0),  # a bare JSON call is read too
    ("none", "anything", None),
])
def test_check_answer(verifier, text, score):
    answer = Answer(text, assistant_message(text, True))
    assert check_answer(verifier, answer, {"tools": TOOLS, "messages": []})[0] == score


def test_a_tool_call_cannot_be_checked_without_tools():
    assert check_answer("tool-call", Answer(GOOD_CALL, {}), {"messages": []}) == (
        None, "the request has no tools to check calls against")


def test_assistant_message_keeps_prose_and_an_unparsable_call_as_content():
    msg = assistant_message("Let me check. " + GOOD_CALL, True)
    assert msg["content"] == "Let me check." and msg["tool_calls"][0]["function"]["name"] == "get_weather"
    broken = '<tool_call>{"name": "get_weather"'
    assert assistant_message(broken, True) == {"role": "assistant", "content": broken}
    assert assistant_message(GOOD_CALL, False) == {"role": "assistant", "content": GOOD_CALL}


def test_the_whole_request_times_out_with_a_504(classifier_file):
    cfg = config().model_copy(update={"limits": config().limits.model_copy(update={"timeout_seconds": 0.05})})
    served = run(router(classifier_file, FakeStudent("sleep"), cfg=cfg), weather_request())
    assert served.status == 504 and served.body["error"]["type"] == "timeout"
