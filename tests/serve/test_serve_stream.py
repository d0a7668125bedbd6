"""Streamed answers (`stream: true`): the chunks of a complete answer, and the official `openai`
client reading them from the app's response (a FastAPI app around the router with a fake student
and upstream, no Ray)."""

from __future__ import annotations

import json

import openai
import pytest
from fastapi import FastAPI, Request
from openai.types.chat import ChatCompletionChunk
from starlette.testclient import TestClient

from conftest import FakeStudent as Student, TOOLS, weather_request
from distill.serve.app import ROUTE_HEADER, respond, take_stream
from distill.serve.config import ServeConfig
from distill.serve.router import Answer, Router, Served, UpstreamError
from distill.serve.stream import DONE, chunks, pieces, sse
from distill.serve.student import assistant_message
from distill.usage.classifier import RequestClassifier

GOOD_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}</tool_call>'
TEXT = "  The weather in Paris is sunny,\nwith a light breeze from the west and 21 degrees.  "


def completion(message: dict, finish: str = "stop", model: str = "m") -> dict:
    return {"id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
            "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}}


def reassembled(events: list[dict]) -> tuple[dict, str | None]:
    """The assistant message and finish reason a client builds from the chunks."""
    message, finish, calls = {"role": None, "content": ""}, None, {}
    for e in events:
        for choice in e["choices"]:
            delta = choice["delta"]
            message["role"] = delta.get("role") or message["role"]
            message["content"] += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                into = calls.setdefault(call["index"], {"id": None, "type": None,
                                                        "function": {"name": "", "arguments": ""}})
                into["id"] = call.get("id") or into["id"]
                into["type"] = call.get("type") or into["type"]
                into["function"]["name"] += call["function"].get("name") or ""
                into["function"]["arguments"] += call["function"].get("arguments") or ""
            finish = choice["finish_reason"] or finish
    if calls:
        message["tool_calls"] = [calls[i] for i in sorted(calls)]
    return message, finish


def test_pieces_join_back_to_the_text():
    for text in (TEXT, "", "one", "   ", "a\n\nb  c\td " * 7):
        assert "".join(pieces(text)) == text
    assert len(pieces(TEXT)) == 4 and pieces(TEXT)[0] == "  The weather in Paris "


def test_content_chunks_rebuild_the_message():
    body = completion({"role": "assistant", "content": TEXT})
    events = chunks(body, include_usage=False)
    for e in events:
        ChatCompletionChunk.model_validate(e)  # the shape the official client parses
        assert e["id"] == "chatcmpl-1" and e["model"] == "m" and e["object"] == "chat.completion.chunk"
        assert "usage" not in e
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert len(events) == 2 + len(pieces(TEXT))
    assert [e["choices"][0]["finish_reason"] for e in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    assert reassembled(events) == ({"role": "assistant", "content": TEXT}, "stop")


def test_tool_call_chunks_and_usage():
    message = assistant_message(GOOD_CALL + "\n" + GOOD_CALL.replace("Paris", "Oslo"), True)
    body = completion(message, "tool_calls")
    events = chunks(body, include_usage=True)
    for e in events:
        ChatCompletionChunk.model_validate(e)
    calls = [e["choices"][0]["delta"]["tool_calls"][0] for e in events if e["choices"]
             and "tool_calls" in e["choices"][0]["delta"]]
    assert [c["index"] for c in calls] == [0, 1] and calls[0]["id"] == message["tool_calls"][0]["id"]
    assert calls[1]["function"] == message["tool_calls"][1]["function"]
    # The usage comes last, in a chunk of its own with no choices; the others carry usage: null.
    assert events[-1]["choices"] == [] and events[-1]["usage"] == body["usage"]
    assert all(e["usage"] is None for e in events[:-1])
    rebuilt, finish = reassembled(events)
    assert finish == "tool_calls" and rebuilt["tool_calls"] == message["tool_calls"]
    assert (rebuilt["content"] or None) == message.get("content")


def test_sse_frames_end_with_done():
    frames = list(sse(chunks(completion({"role": "assistant", "content": "hi there"}))))
    assert frames[-1] == DONE == b"data: [DONE]\n\n"
    assert all(f.startswith(b"data: {") and f.endswith(b"}\n\n") for f in frames[:-1])
    assert json.loads(frames[1][len(b"data: "):])["choices"][0]["delta"] == {"content": "hi there"}


def test_take_stream_leaves_the_request_the_router_answers():
    body = {"messages": [], "stream": True, "stream_options": {"include_usage": True}, "tools": TOOLS}
    assert take_stream(body) == (True, True) and body == {"messages": [], "tools": TOOLS}
    assert take_stream({"stream": True}) == (True, False)
    assert take_stream({"stream_options": {"include_usage": True}}) == (False, False)


class Upstream:
    def __init__(self, fail=None):
        self.fail, self.asked = fail, []

    async def chat(self, request):
        self.asked.append(request)
        if self.fail:
            raise self.fail
        return completion({"role": "assistant", "content": "from the LLM"}, model="big-llm-2025")


@pytest.fixture
def client_of(classifier_file):
    """An `openai` client of a FastAPI app serving the router's answers as the Router deployment
    does (take_stream, respond), with the given student and upstream."""

    def make(student, upstream):
        cfg = ServeConfig.model_validate({
            "classifier": "clf.json", "fallback": {"base_url": "http://127.0.0.1:1/v1", "model": "big-llm"},
            "students": [{"cluster": "c0", "name": "weather-student", "model": "m", "policy": "cascade",
                          "verifier": "tool-call"}]})
        router = Router(cfg, RequestClassifier.load(classifier_file), {"weather-student": student}, upstream)
        api = FastAPI()

        @api.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            stream, include_usage = take_stream(body)
            return respond(await router.handle(body), stream, include_usage)

        return openai.OpenAI(base_url="http://testserver/v1", api_key="k", max_retries=0,
                             http_client=TestClient(api))

    return make


def streamed(client, request: dict, **extra):
    raw = client.chat.completions.with_raw_response.create(**request, stream=True, **extra)
    return raw.headers.get(ROUTE_HEADER), raw.headers.get("content-type"), list(raw.parse())


def test_the_openai_client_streams_a_students_tool_call(client_of):
    client = client_of(Student(GOOD_CALL), Upstream())
    route, kind, got = streamed(client, weather_request(), stream_options={"include_usage": True})
    assert route == "weather-student" and kind.startswith("text/event-stream")
    assert {c.model for c in got} == {"weather-student"} and len({c.id for c in got}) == 1
    calls = [t for c in got if c.choices for t in c.choices[0].delta.tool_calls or []]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris", "days": 2}
    assert [c.choices[0].finish_reason for c in got if c.choices][-1] == "tool_calls"
    assert got[-1].choices == [] and got[-1].usage.total_tokens == 15
    # Not streamed, the same request gets the same answer as one ChatCompletion.
    whole = client.chat.completions.create(**weather_request())
    assert whole.choices[0].message.tool_calls[0].function.arguments == calls[0].function.arguments


def test_a_failed_cascade_streams_the_fallbacks_answer(client_of):
    upstream = Upstream()
    client = client_of(Student("I think it is sunny."), upstream)
    route, _, got = streamed(client, weather_request())
    assert route == "llm; reason=verifier-failed" and {c.model for c in got} == {"big-llm-2025"}
    assert "".join(c.choices[0].delta.content or "" for c in got) == "from the LLM"
    assert all(c.usage is None for c in got)
    assert "stream" not in upstream.asked[0] and "stream_options" not in upstream.asked[0]


def test_an_error_before_streaming_is_a_json_error(client_of):
    client = client_of(Student(RuntimeError("replica died")), Upstream(UpstreamError("HTTP 500: down")))
    with pytest.raises(openai.APIStatusError) as e:
        streamed(client, weather_request())
    assert e.value.status_code == 502 and "did not answer" in e.value.message
    assert e.value.response.headers[ROUTE_HEADER] == "none; reason=student-error+fallback-failed"


def test_respond_sends_errors_as_json_even_when_streaming():
    served = Served(504, {"error": {"message": "late", "type": "timeout", "param": None, "code": None}}, "none",
                    "timeout")
    r = respond(served, stream=True)
    assert r.status_code == 504 and r.media_type == "application/json"
    assert r.headers[ROUTE_HEADER] == "none; reason=timeout" and json.loads(r.body)["error"]["message"] == "late"
