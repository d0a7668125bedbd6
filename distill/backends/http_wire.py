"""The OpenAI chat API on the wire: URLs, a completion's result row, a server's error text and
its Retry-After, for the HTTP backend."""

from __future__ import annotations

import email.utils
import json
import time
from urllib.parse import urlsplit, urlunsplit

import httpx

ERROR_BODY_CHARS = 500


def public_url(url: str) -> str:
    """The URL without user:password@, query string or fragment: safe to record."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def chat_url(base_url: str) -> str:
    """{base_url}/chat/completions, keeping a query string some gateways need (api-version=...)."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + "/chat/completions"))


def parse_completion(data: dict) -> dict:
    """A chat completion's first choice as a result row (without work_id)."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    # vLLM's and SGLang's reasoning parsers move the trace out of the content.
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if reasoning:
        text = f"<think>\n{reasoning}\n</think>\n\n{text}"
    usage = data.get("usage") or {}
    row = {"text": text, "prompt_tokens": int(usage.get("prompt_tokens") or 0),
           "completion_tokens": int(usage.get("completion_tokens") or 0),
           "finish_reason": choice.get("finish_reason") or "unknown", "error": ""}
    if message.get("tool_calls"):
        calls = [_call(c) for c in message["tool_calls"]]
        row["tool_calls"] = calls
        blocks = "\n".join(f"<tool_call>\n{json.dumps(c, ensure_ascii=False)}\n</tool_call>" for c in calls)
        row["text"] = f"{text}\n{blocks}" if text.strip() else blocks
        if row["finish_reason"] == "tool_calls":  # OpenAI's word for a turn that ended in calls
            row["finish_reason"] = "stop"
    return row


def _call(call: dict) -> dict:
    """{"name", "arguments"} of a response's tool call; arguments that are not a JSON object stay text."""
    fn = call.get("function") or {}
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            pass
    return {"name": fn.get("name"), "arguments": args if args is not None else {}}


def error_text(response: httpx.Response) -> str:
    """The server's own message when it gives one (OpenAI's {"error": {"message": ...}}), else the body."""
    try:
        data = response.json()
        error = data.get("error", data) if isinstance(data, dict) else data
        message = error.get("message") if isinstance(error, dict) else None
        text = str(message or data)
    except ValueError:
        text = response.text or response.reason_phrase
    return " ".join(text.split())[:ERROR_BODY_CHARS]


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
