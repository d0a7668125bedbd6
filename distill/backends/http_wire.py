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


def parse_completion(data: dict, top_logprobs: int | None = None) -> dict:
    """A chat completion's first choice as a result row (without work_id); with `top_logprobs`
    (the request asked for them), its `logprobs` too (`parse_logprobs`)."""
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
    if top_logprobs:
        row["logprobs"] = parse_logprobs(choice.get("logprobs"), top_logprobs)
    return row


TOKEN_ID_PREFIX = "token_id:"  # vLLM's token names under return_tokens_as_token_ids


def parse_logprobs(logprobs: dict | None, k: int) -> dict | None:
    """The choice's `logprobs.content` as a result's `logprobs`: the generated token ids, each one's
    log-probability, and the top-k ids and log-probabilities of every position.

    Token ids, not text: a server names tokens by their text, which does not map back to ids
    (a text can be several tokens, a token part of a character). vLLM names them `token_id:N`
    when asked (`return_tokens_as_token_ids`, which the backend sends with extra params on);
    None when the server did not, or gave fewer than k alternatives at a position."""
    content = (logprobs or {}).get("content")
    if content is None:
        return None
    out: dict = {"token_ids": [], "token_logprobs": [], "top_ids": [], "top_logprobs": []}
    for entry in content:
        token = _token_id(entry.get("token"))
        top = sorted(((_token_id(t.get("token")), float(t["logprob"])) for t in entry.get("top_logprobs") or []),
                     key=lambda p: -p[1])[:k]
        if token is None or len(top) < k or any(i is None for i, _ in top):
            return None
        out["token_ids"].append(token)
        out["token_logprobs"].append(float(entry["logprob"]))
        out["top_ids"].append([i for i, _ in top])
        out["top_logprobs"].append([v for _, v in top])
    return out


def _token_id(token) -> int | None:
    if isinstance(token, str) and token.startswith(TOKEN_ID_PREFIX) and token[len(TOKEN_ID_PREFIX):].isdigit():
        return int(token[len(TOKEN_ID_PREFIX):])
    return None


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
