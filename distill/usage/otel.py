"""The `otel` log format: OpenTelemetry GenAI spans exported as OTLP JSON.

A file is one export (`{"resourceSpans": [...]}`) or JSON lines of them (the collector's file
exporter). A span is a model call when its `gen_ai.operation.name` is chat, text_completion or
generate_content (older spans without one: when they name a `gen_ai.request.model`); other
spans (tools, agents, embeddings, HTTP) are counted as skipped. The GenAI conventions have
recorded messages in several ways, and all are read:

- attributes `gen_ai.input.messages`, `gen_ai.output.messages` (and `gen_ai.system_instructions`,
  `gen_ai.tool.definitions`): JSON of role + typed parts (text, tool_call, tool_call_response),
  the current form;
- span events `gen_ai.system.message`, `gen_ai.user.message`, `gen_ai.assistant.message`,
  `gen_ai.tool.message` and `gen_ai.choice`, the form before it;
- events `gen_ai.content.prompt` / `gen_ai.content.completion` with attributes `gen_ai.prompt` /
  `gen_ai.completion`, the first form, and the same names flattened into span attributes
  (`gen_ai.prompt.0.role`, `gen_ai.completion.0.content`, ...), as OpenLLMetry writes them.
"""

from __future__ import annotations

import json
import re
from typing import Any, Iterable, Iterator

from distill.prompts import conversation
from distill.usage.records import Call, Malformed, Source, answer_turn, call_id, message_problems, parse_time

NAME = "otel"
DESCRIPTION = "OpenTelemetry GenAI spans as OTLP JSON (one export, or JSON lines of exports)"
CALL_OPERATIONS = ("chat", "text_completion", "generate_content")
_ROLE_EVENTS = {"gen_ai.system.message": "system", "gen_ai.user.message": "user",
                "gen_ai.assistant.message": "assistant", "gen_ai.tool.message": "tool"}
_FLAT = re.compile(r"gen_ai\.(prompt|completion)\.(\d+)\.(.+)")


def sniff(first: Any) -> bool:
    return isinstance(first, dict) and "resourceSpans" in first


class Skipped:
    """A span that is not a model call: counted, not stored."""


def read(file: str, lines: Iterable[str]) -> Iterator[Call | Malformed | Skipped]:
    lines = list(lines)
    filled = [i for i, line in enumerate(lines, start=1) if line.strip()]
    try:  # one export, maybe pretty-printed over many lines (then its spans have no line of their own)
        documents = [(filled[0] if len(filled) == 1 else None, json.loads("\n".join(lines)))]
    except json.JSONDecodeError:
        documents = []
        for number, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    documents.append((number, json.loads(line)))
                except json.JSONDecodeError as e:
                    yield Malformed(Source(file, number), f"not JSON ({e.msg} at column {e.colno})")
    for number, doc in documents:
        if not isinstance(doc, dict) or not isinstance(doc.get("resourceSpans"), list):
            yield Malformed(Source(file, number), "not an OTLP JSON export: no resourceSpans list")
            continue
        for resource in doc["resourceSpans"]:
            resource_attrs = attributes((resource.get("resource") or {}).get("attributes"))
            for scope in resource.get("scopeSpans") or []:
                for span in scope.get("spans") or []:
                    source = Source(file, number, str(span.get("spanId") or "?") if isinstance(span, dict) else "?")
                    yield parse_span(span, resource_attrs, source)


def any_value(value: Any) -> Any:
    """An OTLP AnyValue ({"stringValue": ...}, {"arrayValue": {"values": [...]}}, ...) as Python."""
    if not isinstance(value, dict):
        return value
    if "stringValue" in value:
        return value["stringValue"]
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "arrayValue" in value:
        return [any_value(v) for v in (value["arrayValue"] or {}).get("values") or []]
    if "kvlistValue" in value:
        return attributes((value["kvlistValue"] or {}).get("values"))
    return None


def attributes(items: Any) -> dict[str, Any]:
    return {a["key"]: any_value(a.get("value")) for a in items or [] if isinstance(a, dict) and "key" in a}


def _json(value: Any) -> Any:
    """A value recorded as JSON text or as a structured OTLP value."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _parts_messages(messages: Any, where: str) -> list[dict]:
    """The current form (role + typed parts) as OpenAI turns; raises ValueError."""
    if not isinstance(messages, list):
        raise ValueError(f"{where} is not a JSON list of messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("parts"), list):
            raise ValueError(f"{where}[{i}] has no parts list")
        texts, calls, results = [], [], []
        for p in m["parts"]:
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text":
                texts.append(str(p.get("content", "")))
            elif kind == "tool_call":
                args = p.get("arguments", {})
                calls.append({"id": p.get("id"), "type": "function", "function": {
                    "name": p.get("name"), "arguments": args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)}})
            elif kind == "tool_call_response":
                result = p.get("response", p.get("result"))
                results.append({"role": "tool", "tool_call_id": p.get("id"),
                                "content": result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)})
            elif kind != "reasoning":  # a model's reasoning is not part of the OpenAI turn
                raise ValueError(f"{where}[{i}] has a {kind!r} part; only text conversations are imported")
        if results:
            out += results
        if texts or calls or not results:
            turn = {"role": m.get("role"), "content": "".join(texts) if texts or not calls else None}
            if calls:
                turn["tool_calls"] = calls
            if m.get("finish_reason"):
                turn["finish_reason"] = m["finish_reason"]
            out.append(turn)
    return out


def _event_messages(events: list[dict]) -> tuple[list[dict], list[dict]]:
    """(input turns, output turns) from the message and choice events."""
    prompt, output = [], []
    for e in events:
        name, a = e.get("name"), attributes(e.get("attributes"))
        if name in _ROLE_EVENTS:
            turn = {"role": a.get("role") or _ROLE_EVENTS[name], "content": a.get("content")}
            if a.get("tool_calls"):
                turn["tool_calls"] = _json(a["tool_calls"])
            if turn["role"] == "tool":
                turn["tool_call_id"] = a.get("id") or a.get("tool_call_id")
            prompt.append(turn)
        elif name == "gen_ai.choice":
            message = _json(a.get("message")) or {}
            message = message if isinstance(message, dict) else {"content": message}
            output.append({"role": "assistant", **message, "finish_reason": a.get("finish_reason")})
        elif name in ("gen_ai.content.prompt", "gen_ai.content.completion"):
            value = _json(a.get("gen_ai.prompt" if name.endswith("prompt") else "gen_ai.completion"))
            role = "user" if name.endswith("prompt") else "assistant"
            turns = value if isinstance(value, list) else [{"role": role, "content": value}]
            (prompt if role == "user" else output).extend(turns)
    return prompt, output


def _flat_messages(attrs: dict) -> tuple[list[dict], list[dict]]:
    """gen_ai.prompt.N.* / gen_ai.completion.N.* attributes (tool calls under .tool_calls.K.*)."""
    found: dict[str, dict[int, dict]] = {"prompt": {}, "completion": {}}
    for key, value in attrs.items():
        if m := _FLAT.fullmatch(key):
            turn = found[m.group(1)].setdefault(int(m.group(2)), {})
            field = m.group(3).split(".")
            if field[0] == "tool_calls" and len(field) == 3:
                call = turn.setdefault("_calls", {}).setdefault(int(field[1]), {})
                call[field[2]] = value
            else:
                turn[field[0]] = value
    out = []
    for side in ("prompt", "completion"):
        turns = []
        for _, turn in sorted(found[side].items()):
            calls = turn.pop("_calls", None)
            if calls:
                turn["tool_calls"] = [{"id": c.get("id"), "type": "function",
                                       "function": {"name": c.get("name"), "arguments": c.get("arguments", "{}")}}
                                      for _, c in sorted(calls.items())]
            turn.setdefault("role", "user" if side == "prompt" else "assistant")
            turns.append(turn)
        out.append(turns)
    return out[0], out[1]


def _messages(attrs: dict, events: list[dict]) -> tuple[list[dict], list[dict]]:
    """(prompt turns, output turns) in whichever form the span recorded them; raises ValueError."""
    if "gen_ai.input.messages" in attrs:
        prompt = _parts_messages(_json(attrs["gen_ai.input.messages"]), "gen_ai.input.messages")
        system = _json(attrs.get("gen_ai.system_instructions"))
        if system:
            text = system if isinstance(system, str) else "".join(
                str(p.get("content", "")) for p in system if isinstance(p, dict) and p.get("type") == "text")
            prompt.insert(0, {"role": "system", "content": text})
        output = _parts_messages(_json(attrs.get("gen_ai.output.messages", "[]")), "gen_ai.output.messages")
        return prompt, output
    prompt, output = _event_messages(events)
    if prompt:
        return prompt, output
    return _flat_messages(attrs)


def parse_span(span: Any, resource: dict, source: Source) -> Call | Malformed | Skipped:
    if not isinstance(span, dict):
        return Malformed(source, "a span that is not an object")
    attrs = attributes(span.get("attributes"))
    operation = attrs.get("gen_ai.operation.name")
    if operation not in CALL_OPERATIONS and not (operation is None and "gen_ai.request.model" in attrs):
        return Skipped()
    events = [e for e in span.get("events") or [] if isinstance(e, dict)]
    try:
        prompt, output = _messages(attrs, events)
    except ValueError as e:
        return Malformed(source, str(e))
    if not prompt:
        return Malformed(source, "no message content recorded (capture it: "
                                 "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true)")
    tools = _json(attrs.get("gen_ai.tool.definitions"))
    tools = tools if isinstance(tools, list) else None
    if problems := message_problems(prompt, tools, "input messages"):
        return Malformed(source, "; ".join(problems))
    status = span.get("status") or {}
    failed = status.get("code") in (2, "STATUS_CODE_ERROR") or "error.type" in attrs
    completion, bad_arguments, finish = [], None, None
    if output and not failed:
        finish = output[0].pop("finish_reason", None)
        turn, problem, bad_arguments = answer_turn(output[0], "output message")
        if problem:
            return Malformed(source, problem)
        completion = [turn]
    elif not failed:
        return Malformed(source, "no output message recorded, and the span is not an error")
    reasons = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(reasons, list) and reasons:
        finish = reasons[0]
    start, end = span.get("startTimeUnixNano"), span.get("endTimeUnixNano")
    try:
        timestamp = parse_time(int(start)) if start is not None else None
        latency = (int(end) - int(start)) / 1e6 if start is not None and end is not None else None
    except (TypeError, ValueError):
        return Malformed(source, "startTimeUnixNano / endTimeUnixNano are not integers")
    tokens_in = attrs.get("gen_ai.usage.input_tokens", attrs.get("gen_ai.usage.prompt_tokens"))
    tokens_out = attrs.get("gen_ai.usage.output_tokens", attrs.get("gen_ai.usage.completion_tokens"))
    call = Call(
        source=source, format=NAME,
        call_id=call_id(NAME, span.get("traceId"), span.get("spanId"), span.get("attributes"), events),
        prompt=conversation.canonical(prompt), completion=completion, tools=conversation.canonical_tools(tools),
        request_params={k.removeprefix("gen_ai.request."): v for k, v in attrs.items()
                        if k.startswith("gen_ai.request.") and k != "gen_ai.request.model"},
        model=attrs.get("gen_ai.request.model"), response_model=attrs.get("gen_ai.response.model"),
        timestamp=timestamp, workload_id=attrs.get("gen_ai.agent.name") or resource.get("service.name"),
        finish_reason=finish, latency_ms=latency,
        prompt_tokens=tokens_in if isinstance(tokens_in, int) else None,
        completion_tokens=tokens_out if isinstance(tokens_out, int) else None,
    )
    if failed:
        call.status = "error"
        call.status_reason = ": ".join(str(x) for x in (attrs.get("error.type"), status.get("message")) if x) or "span status ERROR"
    elif bad_arguments:
        call.status, call.status_reason = "bad-arguments", bad_arguments
    return call
