"""A complete ChatCompletion sent as an OpenAI stream (`stream: true`): `chat.completion.chunk`
events as server-sent events, ended by `data: [DONE]`.

The router answers a streamed request like any other (a cascade checks the student's whole answer
before any of it may be sent), so the answer is complete before its first chunk: per choice, a
chunk with the role, the content in pieces of a few words, each tool call in one chunk (index, id,
type, name and arguments), and a chunk with the finish reason; then, when the client asked for it
(`stream_options: {include_usage: true}`), a chunk with no choices and the usage.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator

WORDS_PER_CHUNK = 4
DONE = b"data: [DONE]\n\n"
_WORD = re.compile(r"\s*\S+\s*|\s+")  # a word with the spaces around it; the pieces join back to the text


def pieces(text: str, words: int = WORDS_PER_CHUNK) -> list[str]:
    """The text in pieces of `words` words; "".join(pieces) == text."""
    found = _WORD.findall(text)
    return ["".join(found[i:i + words]) for i in range(0, len(found), words)]


def chunks(completion: dict, include_usage: bool = False) -> list[dict]:
    """The `chat.completion.chunk` events of a ChatCompletion body, in order."""
    head = {"id": completion.get("id") or "chatcmpl-stream", "object": "chat.completion.chunk",
            "created": completion.get("created") or 0, "model": completion.get("model"),
            "system_fingerprint": completion.get("system_fingerprint")}
    tail = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict, finish: str | None = None) -> dict:
        return {**head, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
                **tail}

    out = []
    for choice in completion.get("choices") or []:
        index, message = choice.get("index", 0), choice.get("message") or {}
        out.append(chunk(index, {"role": message.get("role") or "assistant", "content": ""}))
        for piece in pieces(message.get("content") or ""):
            out.append(chunk(index, {"content": piece}))
        if message.get("refusal"):
            out.append(chunk(index, {"refusal": message["refusal"]}))
        for i, call in enumerate(message.get("tool_calls") or []):
            function = call.get("function") or {}
            out.append(chunk(index, {"tool_calls": [{
                "index": i, "id": call.get("id"), "type": call.get("type") or "function",
                "function": {"name": function.get("name"), "arguments": function.get("arguments") or ""}}]}))
        out.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    if include_usage:
        out.append({**head, "choices": [], "usage": completion.get("usage")})
    return out


def sse(events: Iterable[dict]) -> Iterator[bytes]:
    """The events as server-sent events, then the `[DONE]` the OpenAI clients wait for."""
    for event in events:
        yield b"data: " + json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"
    yield DONE
