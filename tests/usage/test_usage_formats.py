"""Reading logs: both formats (and every OpenTelemetry form) into OpenAI-shaped calls that keep
where they came from; every malformed record located; a file without one readable record refused."""

import json

import pytest

from distill.usage.formats import LogFileError, read_file
from support.usage_logs import (TOOLS, attr, new_form_span, old_form_span, openai_record, otel_export, span,
                                write_jsonl)


def test_openai_pairs_become_calls_with_their_source(tmp_path):
    log = write_jsonl(tmp_path / "calls.jsonl", [
        openai_record("Book LH400 for me", None, tool_calls=[("book_flight", {"passenger_name": "me", "flight": "LH400"})]),
        "",
        openai_record("thanks", "You're welcome.", response_id="chatcmpl-2", params={"temperature": 0.2}),
    ])
    read = read_file(str(log))
    assert read.format == "openai" and not read.malformed
    first, second = read.calls
    assert (first.source.file, first.source.line, second.source.line) == (str(log), 1, 3)
    assert [t["role"] for t in first.prompt] == ["system", "user"]
    [call] = first.completion[0]["tool_calls"]
    assert call["function"] == {"name": "book_flight", "arguments": json.dumps({"passenger_name": "me", "flight": "LH400"})}
    assert first.tools == TOOLS and first.model == "gpt-4o" and first.response_model == "gpt-4o-2024-08-06"
    assert (first.prompt_tokens, first.completion_tokens, first.latency_ms) == (60, 9, 420.0)
    assert (first.workload_id, first.client_id, first.finish_reason) == ("booking", "agent-1", "tool_calls")
    assert first.timestamp.isoformat() == "2025-05-01T10:00:00+00:00"
    assert second.completion == [{"role": "assistant", "content": "You're welcome."}]
    assert second.request_params == {"temperature": 0.2}
    assert first.call_id != second.call_id
    assert read_file(str(log)).calls[0].call_id == first.call_id  # derived from content: stable


def test_malformed_records_are_located_and_the_rest_is_read(tmp_path):
    good = openai_record("hello")
    log = write_jsonl(tmp_path / "mixed.jsonl", [
        good,
        "{not json",
        json.dumps([1, 2]),
        json.dumps({"response": good["response"]}),
        json.dumps({**good, "request": {"messages": []}}),
        json.dumps({**good, "request": {"messages": [{"role": "wizard", "content": "x"}]}}),
        json.dumps({**good, "response": {"choices": []}}),
        json.dumps({**good, "timestamp": "yesterday"}),
        json.dumps({**good, "response": {"choices": [{"message": {"content": 5}}]}}),
        json.dumps({"request": {"messages": [{"role": "tool", "tool_call_id": "x", "content": "r"}]}, "response": good["response"]}),
    ])
    read = read_file(str(log))
    assert len(read.calls) == 1
    where = {m.source.line: m.problem for m in read.malformed}
    assert sorted(where) == list(range(2, 11))
    assert where[2].startswith("not JSON")
    assert "not an object" in where[3]
    assert "no request object" in where[4]
    assert "messages is not a non-empty list" in where[5]
    assert "unknown role 'wizard'" in where[6]
    assert "choices is not a non-empty list" in where[7]
    assert "timestamp" in where[8]
    assert "content is int" in where[9]
    assert "answers call 'x', which no earlier assistant turn made" in where[10]
    assert str(read.malformed[0]) == f"{log}:2: {where[2]}"


def test_current_otel_form(tmp_path):
    export = otel_export([
        new_form_span("a1", "Book LH400 for Kenji", tool_call=("book_flight", {"passenger_name": "Kenji", "flight": "LH400"})),
        new_form_span("a2", "Is it booked?", answer="Yes, seat 12A.",
                      tool_result=("book_flight", {"passenger_name": "Kenji"}, {"status": "booked", "seat": "12A"})),
        span("t1", {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "book_flight"}),
        span("h1", {"http.method": "POST"}),
    ])
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(export, indent=2))  # one export, pretty-printed over many lines
    read = read_file(str(path))
    assert read.format == "otel" and not read.malformed and read.skipped == 2
    first, second = read.calls
    assert first.source.span == "a1" and first.source.line is None
    assert [t["role"] for t in first.prompt] == ["system", "user"]
    assert first.prompt[0]["content"] == "You book flights."
    assert json.loads(first.completion[0]["tool_calls"][0]["function"]["arguments"]) == {"passenger_name": "Kenji", "flight": "LH400"}
    assert [t["role"] for t in second.prompt] == ["system", "user", "assistant", "tool"]
    assert second.prompt[3]["tool_call_id"] == "call_a" and json.loads(second.prompt[3]["content"])["seat"] == "12A"
    assert second.completion[0]["content"] == "Yes, seat 12A."
    assert (first.model, first.response_model, first.prompt_tokens, first.completion_tokens) == ("gpt-4o", "gpt-4o-2024", 31, 7)
    assert first.tools == TOOLS and first.workload_id == "travel-agent" and first.request_params == {"temperature": "0.2"}
    assert first.latency_ms == pytest.approx(812.0) and first.timestamp.year == 2025


def test_older_otel_forms_events_and_flattened_attributes(tmp_path):
    prompt_events = span("c1", {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-3.5-turbo"}, [
        ("gen_ai.content.prompt", {"gen_ai.prompt": json.dumps([{"role": "user", "content": "old hello"}])}),
        ("gen_ai.content.completion", {"gen_ai.completion": json.dumps([{"role": "assistant", "content": "old answer"}])})])
    flattened = span("d1", {"gen_ai.request.model": "gpt-4", "gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "flat hello",
                            "gen_ai.completion.0.role": "assistant", "gen_ai.completion.0.content": "",
                            "gen_ai.completion.0.tool_calls.0.name": "book_flight",
                            "gen_ai.completion.0.tool_calls.0.arguments": '{"flight": "LH1"}'})
    lines = [otel_export([old_form_span("b1", "event hello", "event answer", tool_call=("book_flight", {"flight": "LH2"}))]),
             otel_export([prompt_events, flattened])]
    read = read_file(str(write_jsonl(tmp_path / "spans.jsonl", lines)))
    assert not read.malformed
    events, prompt_form, flat = read.calls
    assert (events.source.line, events.source.span, flat.source.line) == (1, "b1", 2)
    assert [(t["role"], t["content"]) for t in events.prompt] == [("system", "You book flights."), ("user", "event hello")]
    assert events.completion[0]["content"] == "event answer"
    assert events.completion[0]["tool_calls"][0]["function"]["name"] == "book_flight"
    assert prompt_form.prompt[0]["content"] == "old hello" and prompt_form.completion[0]["content"] == "old answer"
    assert flat.prompt[0]["content"] == "flat hello"
    assert flat.completion[0]["tool_calls"][0]["function"] == {"name": "book_flight", "arguments": '{"flight": "LH1"}'}


def test_otel_spans_without_content_or_with_errors(tmp_path):
    lines = [otel_export([
        span("e1", {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}),  # content not captured
        new_form_span("e2", "hi", "hello", **{"error.type": "timeout"}),
        span("e3", {"gen_ai.operation.name": "chat", "gen_ai.input.messages": "[{\"role\": \"user\", \"parts\": "
                    "[{\"type\": \"blob\", \"content\": \"...\"}]}]"}),
        new_form_span("e4", "ok", "fine"),
    ]), "not json"]
    read = read_file(str(write_jsonl(tmp_path / "spans.jsonl", lines)))
    assert [c.source.span for c in read.calls] == ["e2", "e4"]
    assert read.calls[0].status == "error" and read.calls[0].status_reason.startswith("timeout")
    problems = {str(m.source): m.problem for m in read.malformed}
    assert "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in problems[f"{tmp_path}/spans.jsonl:1: span e1"]
    assert "'blob' part" in problems[f"{tmp_path}/spans.jsonl:1: span e3"]
    assert problems[f"{tmp_path}/spans.jsonl:2"].startswith("not JSON")


def test_format_is_found_per_file_or_given(tmp_path):
    log = write_jsonl(tmp_path / "a.jsonl", [openai_record("hi")])
    spans = write_jsonl(tmp_path / "b.jsonl", [otel_export([new_form_span("s", "hi", "yo")])])
    assert read_file(str(log)).format == "openai" and read_file(str(spans)).format == "otel"
    with pytest.raises(LogFileError, match="no readable record .*1 malformed.*not an OTLP JSON export"):
        read_file(str(log), "otel")  # an explicit --format wins over detection


@pytest.mark.parametrize("content, message", [
    ("", "no readable record: it is empty"),
    ("hello\nworld\n", "no readable record: none of its first 100 lines is JSON"),
    ('{"a": 1}\n', "no readable record: its first record is neither"),
    (json.dumps(otel_export([span("x", {"http.method": "GET"})])), "1 spans, none of them a model call"),
    (json.dumps(openai_record("hi") | {"request": {}}) + "\n", "1 malformed; the first: "),
])
def test_a_file_without_one_readable_record_is_refused(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(LogFileError, match=message.replace("(", r"\(")):
        read_file(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(LogFileError, match="nowhere.jsonl: no such file"):
        read_file(str(tmp_path / "nowhere.jsonl"))


def test_attribute_values_of_every_otlp_type():
    from distill.usage.otel import attributes

    raw = [attr("s", "x"), attr("i", 3), attr("b", True), attr("l", ["a", "b"]),
           {"key": "d", "value": {"doubleValue": 0.5}}, {"key": "kv", "value": {"kvlistValue": {"values": [attr("k", "v")]}}}]
    assert attributes(raw) == {"s": "x", "i": 3, "b": True, "l": ["a", "b"], "d": 0.5, "kv": {"k": "v"}}


def test_a_damaged_first_line_does_not_hide_the_format(tmp_path):
    log = write_jsonl(tmp_path / "late.jsonl", ["{not json", openai_record("hello"), openai_record("again")])
    read = read_file(str(log))
    assert read.format == "openai" and len(read.calls) == 2
    assert [m.source.line for m in read.malformed] == [1]
