"""What the router does with one chat-completions request, as plain Python (no Ray, no HTTP):
classify it, apply its cluster's policy, ask the student, check the answer, and answer from the
fallback when the student has no answer or a wrong one. The Ray Serve app (distill.serve.app)
wraps it; tests drive it with a fake student and a fake upstream.

    classify ─▶ a student owns the cluster? ─no──────────────────────────────────▶ fallback (unrouted / no-student)
                  │ yes: policy llm, low confidence, an open breaker, ─yes──────────▶ fallback (policy-llm / ...)
                  │      a request it cannot serve (n > 1, tool_choice, ...)
                  ▼
               student ─error / timeout──────────────────────────────────────────▶ fallback (student-error / -timeout)
                  │ answer
                  ▼ cascade: verifier ─fails──────────────────────────────────────▶ fallback (verifier-failed)
               the student's answer

Every answer says who gave it: `model` (the student's name, or the upstream's model) and the
x-distill-route header ("tool-student", or "llm; reason=verifier-failed").
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from distill.serve.config import ServeConfig, Student
from distill.serve.metrics import NoMetrics, Recorder, record

log = logging.getLogger(__name__)
LLM = "llm"
# Request fields a student serves; others (logprobs, n > 1, audio, ...) go to the fallback.
STUDENT_FIELDS = {"model", "messages", "tools", "tool_choice", "max_tokens", "max_completion_tokens", "temperature",
                  "top_p", "stop", "n", "stream", "user", "seed", "response_format", "parallel_tool_calls",
                  "metadata", "store", "presence_penalty", "frequency_penalty"}


@dataclass
class Answer:
    """A student's answer: the text it wrote and that text as an OpenAI assistant message."""

    text: str
    message: dict
    finish_reason: str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0


class StudentClient(Protocol):
    async def answer(self, request: dict) -> Answer: ...


class Upstream(Protocol):
    async def chat(self, request: dict) -> dict: ...  # a ChatCompletion; raises UpstreamError


class UpstreamError(Exception):
    def __init__(self, message: str, status: int = 502):
        super().__init__(message)
        self.status = status  # what the client gets: 502 (an error upstream) or 504 (it timed out)


class CallLog(Protocol):
    async def append(self, record: dict) -> None: ...


def error_body(message: str, kind: str, code: str | None = None) -> dict:
    """An error in the shape OpenAI's API (and its client) uses."""
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


@dataclass
class Served:
    """The router's answer to one request, and what the served-call log keeps of it."""

    status: int
    body: dict
    route: str  # the student's name, "llm", or "none" when nobody answered
    reason: str | None = None  # why not the student (a fallback), or why nobody answered
    cluster: str | None = None
    confidence: float = 0.0
    how: str = "none"  # the classifier level that placed it
    student: str | None = None  # the student asked, if one was
    verdict: dict | None = None  # the check of the student's answer: {"verifier", "score", "reason"}
    latency_ms: float = 0.0

    @property
    def header(self) -> str:
        return self.route if self.reason is None else f"{self.route}; reason={self.reason}"


class CircuitBreaker:
    """Closed: every request goes through. After `failures` consecutive failures it opens: none
    goes through for `open_seconds`; then one trial request does (half-open), and its outcome
    closes the breaker or opens it again."""

    def __init__(self, failures: int, open_seconds: float, clock: Callable[[], float] = time.monotonic):
        self.failures, self.open_seconds, self.clock = failures, open_seconds, clock
        self.consecutive, self.opened_at, self.trial = 0, None, False

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() >= self.opened_at + self.open_seconds else "open"

    def allow(self) -> bool:
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial:
            self.trial = True
            return True
        return False

    def success(self) -> None:
        self.consecutive, self.opened_at, self.trial = 0, None, False

    def failure(self) -> None:
        self.consecutive += 1
        if self.trial or self.consecutive >= self.failures:
            self.opened_at, self.trial = self.clock(), False


def check_answer(verifier: str, answer: Answer, request: dict) -> tuple[float | None, str]:
    """(score, why) of a student's answer: 1.0 passes, 0.0 fails, None cannot be checked.
    tool-call: distill's tool-call verifier against the request's own tools: at least one call,
    each parses, names a tool that was sent and fits its parameters' schema. json: the answer is
    a JSON object (a ```json fence around it is allowed)."""
    if verifier == "tool-call":
        from distill.verifiers import VerifyContext
        from distill.verifiers.tool_call import ToolCallParams, verify_tool_call

        tools = request.get("tools")
        if not tools:
            return None, "the request has no tools to check calls against"
        v = verify_tool_call([answer.text], [json.dumps({"tools": tools})], ToolCallParams(), VerifyContext.blank(1))[0]
        return v.score, v.reason
    if verifier == "json":
        text = answer.text.strip()
        if text.startswith("```"):
            text = text.split("\n", 1)[-1].rsplit("```", 1)[0]
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            return 0.0, f"not JSON: {e.msg} at column {e.colno}"
        return (1.0, "a JSON object") if isinstance(value, dict) else (0.0, f"JSON {type(value).__name__}, not an object")
    return None, "no verifier"


def unservable(request: dict) -> str | None:
    """Why a student cannot serve this request as asked (the fallback can), or None."""
    if (request.get("n") or 1) != 1:
        return "n-above-1"
    if request.get("tool_choice") not in (None, "auto"):
        return "tool-choice"  # "none", "required" or a named function: the student's template cannot force them
    fmt = request.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        return "response-format"
    if extra := sorted(set(request) - STUDENT_FIELDS):
        return f"unsupported-field-{extra[0]}"
    return None


def completion(model: str, answer: Answer) -> dict:
    """A ChatCompletion body of a student's answer."""
    finish = "tool_calls" if answer.message.get("tool_calls") else answer.finish_reason
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": answer.message, "finish_reason": finish,
                                         "logprobs": None}],
            "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens,
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens}}


@dataclass
class Router:
    config: ServeConfig
    classifier: Any  # a RequestClassifier (anything with classify(request) -> Route); None: nothing routes
    students: dict[str, StudentClient]  # by student name
    upstream: Upstream
    call_log: CallLog | None = None
    clock: Callable[[], float] = time.monotonic
    metrics: Recorder = field(default_factory=NoMetrics)  # calls, fallbacks, failed checks, latency
    breakers: dict[str, CircuitBreaker] = field(init=False)

    def __post_init__(self):
        b = self.config.breaker
        self.breakers = {s.name: CircuitBreaker(b.failures, b.open_seconds, self.clock) for s in self.config.students}

    async def handle(self, request: dict) -> Served:
        """Answers one request (a chat.completions.create body), logs it and records its metrics.
        Never raises: an answer nobody could give is a Served with an error status."""
        started = self.clock()
        try:
            served = await asyncio.wait_for(self._route(request), self.config.limits.timeout_seconds)
        except asyncio.TimeoutError:
            served = Served(504, error_body(f"no answer within limits.timeout_seconds="
                                            f"{self.config.limits.timeout_seconds:g}", "timeout"), "none", "timeout")
        except Exception as e:  # noqa: BLE001 - a bug here must still answer the client, and be logged
            log.exception("routing failed")
            served = Served(500, error_body(f"the router failed: {type(e).__name__}", "server_error"), "none",
                            "router-error")
        served.latency_ms = (self.clock() - started) * 1000
        try:
            record(self.metrics, served)
        except Exception:  # noqa: BLE001 - a metric is never worth a failed call
            log.exception("the call's metrics could not be recorded")
        if self.call_log is not None:
            try:
                await self.call_log.append(served_record(request, served))
            except Exception:  # noqa: BLE001 - a full disk must not fail the call; the error log says so
                log.exception("the served-call log could not be written")
        return served

    async def _route(self, request: dict) -> Served:
        route = self.classifier.classify(request) if self.classifier is not None else None
        where = {"cluster": route.cluster, "confidence": route.confidence, "how": route.how} if route else {}
        student = self.config.student(route.cluster) if route and route.cluster else None
        if student is None:
            return await self._fallback(request, "unrouted" if not route or route.cluster is None else "no-student",
                                        **where)
        why = ("policy-llm" if student.policy == "llm"
               else "low-confidence" if route.confidence < student.min_confidence
               else unservable(request))
        if why is None and not self.breakers[student.name].allow():
            why = "breaker-open"
        if why:
            return await self._fallback(request, why, student=student.name, **where)
        answer, failure = await self._ask(student, request)
        if answer is None:
            return await self._fallback(request, failure, student=student.name, **where)
        score, reason = check_answer(student.verifier, answer, request)
        verdict = {"verifier": student.verifier, "score": score, "reason": reason}
        if student.policy == "cascade" and score is not None and score < 1.0:
            return await self._fallback(request, "verifier-failed", student=student.name, verdict=verdict, **where)
        return Served(200, completion(student.name, answer), student.name, None, student=student.name,
                      verdict=verdict, **where)

    async def _ask(self, student: Student, request: dict) -> tuple[Answer | None, str | None]:
        """The student's answer, or None and why not; its breaker hears of the outcome."""
        breaker = self.breakers[student.name]
        asked = {**request, "max_tokens": min(x for x in (request.get("max_completion_tokens"),
                                                          request.get("max_tokens"), student.max_tokens) if x)}
        try:
            answer = await asyncio.wait_for(self.students[student.name].answer(asked), student.timeout_seconds)
        except asyncio.TimeoutError:
            breaker.failure()
            return None, "student-timeout"
        except Exception as e:  # noqa: BLE001 - a dead or failing replica means: ask the fallback
            log.warning("student %s failed: %s: %s", student.name, type(e).__name__, e)
            breaker.failure()
            return None, "student-error"
        breaker.success()
        return answer, None

    async def _fallback(self, request: dict, reason: str, **where) -> Served:
        fb = self.config.fallback
        try:
            body = await self.upstream.chat({**request, "model": fb.model})
        except UpstreamError as e:
            message = f"the fallback model {fb.model} did not answer ({e}); asked because: {reason}"
            return Served(e.status, error_body(message, "upstream_error"), "none", f"{reason}+fallback-failed",
                          **where)
        body = {**body, "model": body.get("model") or fb.model}
        return Served(200, body, LLM, reason, **where)


def served_record(request: dict, served: Served) -> dict:
    """The served call as an `openai`-format log record (request, response, latency_ms, timestamp;
    an error in place of the response when nobody answered) plus how it was routed."""
    record: dict[str, Any] = {"timestamp": time.time(), "request": request, "latency_ms": round(served.latency_ms, 3)}
    if served.status == 200:
        record["response"] = served.body
    else:
        record["error"] = served.body.get("error")
    record["route"] = {"answered_by": served.route, "model": served.body.get("model") if served.status == 200 else None,
                       "reason": served.reason, "cluster": served.cluster, "confidence": served.confidence,
                       "how": served.how, "student": served.student, "status": served.status}
    record["verdict"] = served.verdict
    return record
