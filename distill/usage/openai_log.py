"""The `openai` log format: JSON lines of chat-completions request/response pairs.

Each line is an object with `request` (the body sent to `chat.completions.create`: messages,
tools, model, sampling parameters) and `response` (the ChatCompletion that came back:
`choices[0].message` with its `tool_calls`, `usage`, `model`), and optionally `timestamp` (ISO
8601 or epoch seconds), `workload_id`, `client_id` and `latency_ms`: NVIDIA Data Flywheel's
record. A failed call has an `error` object in place of, or inside, the response. A call that
`distill serve` logged with a student in `route.answered_by` is marked `by-student`: its answer
is the student's own, not the large model's.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

from distill.prompts import conversation
from distill.usage.records import Call, Malformed, Source, answer_turn, call_id, message_problems, parse_time

NAME = "openai"
STUDENT = "by-student"  # the status of a served call a student answered
DESCRIPTION = "JSON lines of chat-completions request/response pairs (NVIDIA Data Flywheel's records)"


def sniff(first: Any) -> bool:
    """Whether the file's first JSON value looks like this format."""
    return isinstance(first, dict) and ("request" in first or "response" in first)


def read(file: str, lines: Iterable[str]) -> Iterator[Call | Malformed]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        source = Source(file, number)
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            yield Malformed(source, f"not JSON ({e.msg} at column {e.colno})")
            continue
        yield parse_record(record, source)


def _error_text(error: Any) -> str:
    if isinstance(error, dict):
        message = error.get("message") or error.get("msg") or ""
        kind = error.get("type") or error.get("code") or "error"
        return f"{kind}: {message}" if message else str(kind)
    return str(error)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_record(record: Any, source: Source) -> Call | Malformed:
    if not isinstance(record, dict):
        return Malformed(source, f"a JSON {type(record).__name__}, not an object with request and response")
    request, response = record.get("request"), record.get("response")
    if not isinstance(request, dict):
        return Malformed(source, "no request object (the body sent to chat.completions.create)")
    messages, tools = request.get("messages"), request.get("tools")
    if problems := message_problems(messages, tools, "request"):
        return Malformed(source, "; ".join(problems))
    error = record.get("error") or (response.get("error") if isinstance(response, dict) else None)
    completion, bad_arguments, finish, usage = [], None, None, {}
    if error is None:
        if not isinstance(response, dict):
            return Malformed(source, "no response object (the ChatCompletion) and no error")
        choices = response.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return Malformed(source, "response.choices is not a non-empty list")
        turn, problem, bad_arguments = answer_turn(choices[0].get("message"), "response.choices[0].message")
        if problem:
            return Malformed(source, problem)
        completion, finish = [turn], choices[0].get("finish_reason")
        usage = response.get("usage") if isinstance(response.get("usage"), dict) else {}
    try:
        timestamp = parse_time(record.get("timestamp"))
    except ValueError as e:
        return Malformed(source, str(e))
    latency = record.get("latency_ms")
    if latency is not None and (isinstance(latency, bool) or not isinstance(latency, (int, float))):
        return Malformed(source, f"latency_ms is a {type(latency).__name__}, not a number")
    call = Call(
        source=source, format=NAME,
        call_id=call_id(NAME, request, response, record.get("error")),
        prompt=conversation.canonical(messages), completion=completion,
        tools=conversation.canonical_tools(tools),
        request_params={k: v for k, v in request.items() if k not in ("messages", "tools", "model")},
        model=_text(request.get("model")),
        response_model=_text(response.get("model")) if isinstance(response, dict) else None,
        timestamp=timestamp, workload_id=_text(record.get("workload_id")), client_id=_text(record.get("client_id")),
        finish_reason=_text(finish), prompt_tokens=_int(usage.get("prompt_tokens")),
        completion_tokens=_int(usage.get("completion_tokens")),
        latency_ms=float(latency) if latency is not None else None,
    )
    route = record.get("route")  # distill serve's log: who answered
    answered_by = route.get("answered_by") if isinstance(route, dict) else None
    if error is not None:
        call.status, call.status_reason = "error", _error_text(error)
    elif bad_arguments:
        call.status, call.status_reason = "bad-arguments", bad_arguments
    elif answered_by not in (None, "llm", "none"):
        # A distilled student's own answer: the next round learns from the large model's answers.
        call.status, call.status_reason = STUDENT, f"answered by the small model {answered_by} (distill serve)"
    return call


def _text(value: Any) -> str | None:
    return None if value is None else str(value)
