"""The served-call log: redacted at write as the import redacts, durable line by line, and read
back by the real `distill usage import` as calls of the openai format."""

from __future__ import annotations

import asyncio
import json

from conftest import TOOLS, WEATHER_SYSTEM
from distill.serve.router import Answer, Router
from distill.serve.served_log import ServedLog
from distill.serve.student import assistant_message
from distill.usage.classifier import RequestClassifier
from distill.usage.importer import import_logs
from distill.usage.store import UsageStore
from test_serve_router import FakeStudent, FakeUpstream, config

EMAIL, PHONE, CARD = "maria.gonzalez@acme-mail.com", "+1 415 555 0132", "4539 1488 0343 6467"
SECRET = "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6"


def pii_request(user: str) -> dict:
    return {"model": "gpt-4o", "temperature": 0.2, "user": EMAIL, "tools": TOOLS,
            "messages": [{"role": "system", "content": WEATHER_SYSTEM}, {"role": "user", "content": user}]}


def served_calls(tmp_path, classifier_file):
    """Three calls through a router with a real ServedLog: the student answers one with the
    caller's e-mail in its arguments, fails the check on one (the LLM answers), and one errors."""
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "' + EMAIL + '"}}</tool_call>'
    bad = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "days": "' + PHONE + '"}}</tool_call>'
    log = ServedLog(tmp_path / "served")
    r = Router(config(), RequestClassifier.load(classifier_file), {"weather-student": FakeStudent(call, bad, "x")},
               FakeUpstream(), log)
    served = [asyncio.run(r.handle(pii_request(f"I am Maria Gonzalez, mail me at {EMAIL}, card {CARD}, key {SECRET}"))),
              asyncio.run(r.handle(pii_request(f"Call me on {PHONE} about Oslo")))]
    r.upstream.fail = __import__("distill.serve.router", fromlist=["UpstreamError"]).UpstreamError(
        f"HTTP 500: could not reach {EMAIL}")
    served.append(asyncio.run(r.handle(pii_request("Weather in Rome?"))))
    return log, served


def test_the_log_is_redacted_at_write_and_keeps_the_route(tmp_path, classifier_file):
    log, served = served_calls(tmp_path, classifier_file)
    # The clients got their answers unredacted: only the log is rewritten.
    assert EMAIL in served[0].body["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    text = log.path.read_text()
    for secret in (EMAIL, PHONE, CARD, SECRET, "Maria", "Gonzalez"):
        assert secret not in text, secret
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 3 and log.path.name.startswith("served-")
    first, second, third = records
    assert "<EMAIL_1>" in first["request"]["messages"][1]["content"]
    # The same placeholder in the answer's arguments as in the question: one table per call.
    args = json.loads(first["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert args == {"city": "<EMAIL_1>"} and first["request"]["user"] == "<EMAIL_1>"
    assert {r["kind"] for r in first["redactions"]} >= {"email", "card", "secret", "person"}
    assert first["route"] | {"confidence": None} == {
        "answered_by": "weather-student", "model": "weather-student", "reason": None, "cluster": "c0",
        "confidence": None, "how": "signature", "student": "weather-student", "status": 200}
    assert first["verdict"]["score"] == 1.0
    assert second["route"]["answered_by"] == "llm" and second["route"]["reason"] == "verifier-failed"
    assert second["verdict"]["score"] == 0.0 and "should be integer" in second["verdict"]["reason"]
    assert second["response"]["model"] == "big-llm-2025"
    assert third["route"]["status"] == 502 and third["error"]["type"] == "upstream_error"
    assert "<EMAIL_1>" in third["error"]["message"]


def test_distill_usage_import_reads_the_served_log(tmp_path, classifier_file):
    log, _ = served_calls(tmp_path, classifier_file)
    summary = import_logs([str(log.path)], str(tmp_path / "store"), progress=None)
    assert summary.files[0].format == "openai" and summary.read == 3 and not summary.malformed
    # Already redacted: the import finds nothing left to replace.
    assert summary.redacted_calls == 0, summary.redactions
    rows = UsageStore.open(str(tmp_path / "store"), existing=True).read_calls(
        ["model", "response_model", "status", "completion", "tools"]).to_pylist()
    by_answer = {r["response_model"]: r for r in rows}
    assert set(by_answer) == {"weather-student", "big-llm-2025", None}
    student = by_answer["weather-student"]
    # The student's own answer is kept apart: the next round learns from the large model's answers.
    assert student["status"] == "by-student" and by_answer["big-llm-2025"]["status"] == "ok"
    assert student["completion"][0]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert json.loads(student["tools"])[0]["function"]["name"] == "get_weather"
    assert by_answer[None]["status"] == "error"


def test_a_record_the_import_cannot_read_keeps_no_content(tmp_path):
    log = ServedLog(tmp_path, use_ner=False)
    log.write({"request": {"messages": "hi " + EMAIL}, "response": None, "route": {"answered_by": "llm"}})
    record = json.loads(log.path.read_text())
    assert record["request"] is None and "messages" in record["unreadable"] and EMAIL not in log.path.read_text()
