"""Conversation prompts: OpenAI-format turns plus tool definitions, checked and made canonical.

A conversation prompt is the list of turns an agent sent (system, user, assistant with or
without `tool_calls`, tool results) ending in the turn the teacher answers (a user turn, or the
tool results it must act on), with the OpenAI function definitions offered. Everything that
would make a chat template fail, or train the student on a broken exchange, is a problem of the
row, said in words a user can act on.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

ROLES = ("system", "developer", "user", "assistant", "tool")
ANSWERED_AFTER = ("user", "tool")  # the last turn: what the teacher answers


def tool_names(tools: list) -> list[str]:
    names = []
    for t in tools:
        fn = t.get("function", t) if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.append(fn["name"])
    return names


def _content_problem(content: Any) -> str | None:
    if content is None or isinstance(content, str):
        return None
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                         and isinstance(p.get("text"), str) for p in content):
        return None  # OpenAI content parts; only text ones are read
    return f"content is {type(content).__name__}, not a string (or a list of text parts)"


def _tool_problems(tools: Any) -> list[str]:
    if not isinstance(tools, list):
        return [f"tools is {type(tools).__name__}, not a list of function definitions"]
    problems = []
    for i, t in enumerate(tools):
        fn = t.get("function", t) if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            problems.append(f"tools[{i}] has no function name")
        elif "parameters" in fn and not isinstance(fn["parameters"], dict):
            problems.append(f"tools[{i}] ({fn['name']}): parameters is not a JSON Schema object")
    names = tool_names(tools)
    if dup := sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"tools define {', '.join(map(repr, dup))} more than once")
    return problems


def _call_problems(call: Any, where: str, known: set[str] | None) -> tuple[list[str], str | None]:
    """Problems of one assistant tool call, and its id."""
    if not isinstance(call, dict):
        return [f"{where} is {type(call).__name__}, not an object"], None
    fn = call.get("function", call)
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        return [f"{where} has no function name"], call.get("id")
    problems = []
    name = fn["name"]
    if known is not None and name not in known:
        problems.append(f"{where} calls {name!r}, which no tool definition has "
                        f"(tools: {', '.join(sorted(known)) or 'none'})")
    args = fn.get("arguments", {})
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            problems.append(f"{where} ({name}): arguments are malformed JSON ({e.msg} at column {e.colno})")
            args = {}
    if args is not None and not isinstance(args, dict):
        problems.append(f"{where} ({name}): arguments are a {type(args).__name__}, not an object")
    return problems, call.get("id")


def problems(messages: Any, tools: Any) -> list[str]:
    """Every reason the conversation and tools cannot be a prompt; empty when they can."""
    out: list[str] = []
    if tools is not None:
        out += _tool_problems(tools)
    known = set(tool_names(tools)) if isinstance(tools, list) else None
    if not isinstance(messages, list) or not messages:
        return out + ["messages is not a non-empty list of turns"]
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            out.append(f"{where} is {type(m).__name__}, not an object with role and content")
            continue
        role = m.get("role")
        if role not in ROLES:
            out.append(f"{where} has unknown role {role!r} (roles: {', '.join(ROLES)})")
            continue
        if why := _content_problem(m.get("content")):
            out.append(f"{where} ({role}): {why}")
        calls = m.get("tool_calls")
        if calls is not None and role != "assistant":
            out.append(f"{where} ({role}) has tool_calls; only assistant turns make calls")
        if role == "assistant" and calls is not None:
            if not isinstance(calls, list):
                out.append(f"{where}: tool_calls is not a list")
                continue
            for j, call in enumerate(calls):
                found, call_id = _call_problems(call, f"{where} tool_calls[{j}]", known)
                out += found
                if call_id:
                    call_ids.add(str(call_id))
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not call_id:
                out.append(f"{where} (tool) has no tool_call_id: which call does it answer?")
            elif str(call_id) not in call_ids:
                out.append(f"{where} (tool) answers call {call_id!r}, which no earlier assistant turn made")
        if role == "user" and not _text(m.get("content")).strip():
            out.append(f"{where} (user) is empty")
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") in ROLES and last.get("role") not in ANSWERED_AFTER:
        out.append(f"the last turn is {last['role']!r}; a prompt ends with the turn to answer "
                   f"({' or '.join(ANSWERED_AFTER)})")
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def question_of(messages: list[dict]) -> str:
    """The text of the last user turn: what filters, decontamination and reports read."""
    for m in reversed(messages):
        if m.get("role") == "user":
            return _text(m.get("content"))
    return ""


def canonical(messages: list[dict]) -> list[dict]:
    """The turns as stored and sent: only the OpenAI keys, call arguments as JSON object text
    (what chat templates and servers take), text parts joined."""
    out = []
    for m in messages:
        turn: dict[str, Any] = {"role": m["role"], "content": _text(m.get("content"))
                                if m.get("content") is not None else None}
        if m.get("tool_calls"):
            calls = []
            for k, call in enumerate(m["tool_calls"]):
                fn = call.get("function", call)
                args = fn.get("arguments", {})
                if not isinstance(args, str):
                    args = json.dumps(args if args is not None else {}, ensure_ascii=False)
                calls.append({"id": str(call.get("id") or f"call_{k}"), "type": "function",
                              "function": {"name": fn["name"], "arguments": args}})
            turn["tool_calls"] = calls
        if m["role"] == "tool":
            turn["tool_call_id"] = str(m.get("tool_call_id"))
        if m.get("name") and m["role"] in ("user", "assistant", "tool"):
            turn["name"] = m["name"]
        out.append(turn)
    return out


def canonical_tools(tools: list | None) -> list[dict] | None:
    """Tool definitions in the OpenAI form {"type": "function", "function": {...}}."""
    if not tools:
        return None
    return [t if isinstance(t, dict) and "function" in t else {"type": "function", "function": t} for t in tools]


def conversation_id(messages: list[dict], tools: list[dict] | None) -> str:
    """A stable id of the whole conversation and its tools: key order and whitespace aside."""
    text = json.dumps({"messages": messages, "tools": tools or []}, sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def template_messages(messages: list[dict]) -> list[dict]:
    """The turns for a chat template: a call's arguments as an object, as templates read them
    (Qwen's and Llama's templates write `arguments | tojson`)."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [{**c, "function": {**c["function"], "arguments": _loads(c["function"]["arguments"])}}
                                     for c in m["tool_calls"]]}
        out.append(m)
    return out


def _loads(args: Any) -> Any:
    if isinstance(args, str):
        try:
            return json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return args
    return args
