"""What a log reader produces: one `Call` per logged model call, or a `Malformed` record that
says where it is and what is wrong with it. Shared by every log format.

A call's conversation is in the OpenAI message shape the rest of distill uses
(distill.prompts.conversation, distill.schema.MESSAGE): `prompt` is the turns sent, `completion`
the assistant turn that came back (empty for an error response).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from distill.lineage import digest
from distill.prompts import conversation


@dataclass(frozen=True)
class Source:
    """Where a record came from: its file, and its line (JSON lines) or span (OTLP), or both."""

    file: str
    line: int | None = None
    span: str | None = None

    def __str__(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "")
        return where + (f": span {self.span}" if self.span else "")


@dataclass(frozen=True)
class Malformed:
    source: Source
    problem: str  # what is wrong, never the record's content

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


@dataclass
class Call:
    source: Source
    format: str
    call_id: str  # content-derived: the same logged call gives the same id in every import
    prompt: list[dict]
    completion: list[dict]
    tools: list[dict] | None = None
    request_params: dict = field(default_factory=dict)  # the request's other fields: temperature, tool_choice, ...
    model: str | None = None
    response_model: str | None = None
    timestamp: datetime | None = None
    workload_id: str | None = None
    client_id: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    status: str = "ok"
    status_reason: str | None = None  # why a call failed: the error response's type and message, ...
    redactions: list[dict] = field(default_factory=list)  # {kind, path, count}
    duplicate: str | None = None  # exact | near
    duplicate_of: str | None = None

    def request_key(self) -> str:
        """What the agent sent, for spotting a retry: the same key twice is the same request."""
        return digest(self.model, self.prompt, self.tools, self.request_params)


def call_id(*content: Any) -> str:
    return digest(*content, length=24)


def message_problems(messages: Any, tools: Any, where: str) -> list[str]:
    """Why `messages` cannot be stored as a conversation prompt (distill's own checks)."""
    return [f"{where}: {p}" for p in conversation.problems(messages, tools)]


def answer_turn(message: Any, where: str) -> tuple[dict | None, str | None, str | None]:
    """(the assistant turn, its problem, why its tool calls failed) of a logged answer.

    A problem makes the record malformed; calls whose arguments are not a JSON object make a
    failed call (status bad-arguments) whose turn is still kept as it was logged."""
    if not isinstance(message, dict):
        return None, f"{where} is not an object", None
    content = message.get("content")
    if isinstance(content, list):  # text parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is not None and not isinstance(content, str):
        return None, f"{where}.content is {type(content).__name__}, not text", None
    turn: dict[str, Any] = {"role": "assistant", "content": content}
    calls, bad = message.get("tool_calls"), []
    if calls:
        if not isinstance(calls, list):
            return None, f"{where}.tool_calls is not a list", None
        turn["tool_calls"] = []
        for k, call in enumerate(calls):
            fn = call.get("function", call) if isinstance(call, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
                return None, f"{where}.tool_calls[{k}] has no function name", None
            args = fn.get("arguments", "")
            if not isinstance(args, str):
                args = json.dumps(args, ensure_ascii=False)
            try:
                if not isinstance(json.loads(args), dict):
                    bad.append(f"tool_calls[{k}] ({fn['name']}): arguments are not a JSON object")
            except json.JSONDecodeError as e:
                bad.append(f"tool_calls[{k}] ({fn['name']}): arguments are not valid JSON ({e.msg} at column {e.colno})")
            turn["tool_calls"].append({"id": str(call.get("id") or f"call_{k}"), "type": "function",
                                       "function": {"name": fn["name"], "arguments": args}})
    return turn, None, "; ".join(bad) or None


def parse_time(value: Any) -> datetime | None:
    """A logged time: ISO 8601 text, or seconds (or milli/micro/nanoseconds) since the epoch.
    Raises ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"timestamp {value!r} is not a time")
    if isinstance(value, (int, float)) or (isinstance(value, str) and value.strip().replace(".", "", 1).isdigit()):
        seconds = float(value)
        while seconds > 1e11:  # ms, us, ns since the epoch: no log holds a call from the year 5000
            seconds /= 1000
        return datetime.fromtimestamp(seconds, tz=timezone.utc)
    if isinstance(value, str):
        try:
            t = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("timestamp is neither ISO 8601 nor seconds since the epoch") from None
        return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
    raise ValueError(f"timestamp is a {type(value).__name__}, not a time")
