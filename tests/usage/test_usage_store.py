"""The log store: its layout, idempotent imports, refusing what is not a store, and no planted
secret or personal value anywhere in its files after an import."""

import json

import pyarrow.parquet as pq
import pytest

from distill.usage import CALL_SCHEMA, StoreError, UsageStore, import_logs
from distill.usage.formats import LogFileError
from support.usage_logs import new_form_span, old_form_span, openai_record, otel_export, write_jsonl


def three_calls(tmp_path, name="calls.jsonl"):
    return write_jsonl(tmp_path / name, [openai_record("Book LH400", response_id="r1"),
                                         openai_record("Book LH401", response_id="r2"),
                                         openai_record("Cancel LH402", response_id="r3")])


def test_the_layout_and_what_a_stored_call_holds(tmp_path):
    summary = import_logs([str(three_calls(tmp_path))], str(tmp_path / "store"))
    store = UsageStore.open(str(tmp_path / "store"))
    manifest = json.loads(store.manifest_path.read_text())
    assert manifest["kind"] == "distill usage store" and manifest["records"] == 3 == summary.new
    [part] = manifest["parts"]
    assert part["records"] == 3 and (store.calls_dir / part["file"]).is_file()
    assert sorted(p.name for p in store.root.iterdir() if not p.name.startswith(".")) == ["calls", "manifest.json"]
    table = store.read_calls()
    assert table.schema == CALL_SCHEMA and pq.read_schema(store.calls_dir / part["file"]) == CALL_SCHEMA
    row = table.to_pylist()[0]
    assert row["source_file"] == str(tmp_path / "calls.jsonl") and row["source_line"] == 1 and row["format"] == "openai"
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert set(row["prompt"][0]) == {"role", "content", "tool_calls", "tool_call_id"}  # distill.schema.MESSAGE
    assert row["completion"][0]["content"] == "Done." and row["status"] == "ok" and row["duplicate"] is None
    assert json.loads(row["tools"])[0]["function"]["name"] == "book_flight"
    [record] = manifest["imports"]
    assert record["new"] == 3 and record["files"][0]["calls"] == 3


def test_importing_the_same_file_twice_adds_nothing(tmp_path):
    log, store = str(three_calls(tmp_path)), str(tmp_path / "store")
    import_logs([log], store)
    parts_before = sorted((tmp_path / "store" / "calls").iterdir())
    again = import_logs([log], store)
    assert (again.new, again.present) == (0, 3)
    assert sorted((tmp_path / "store" / "calls").iterdir()) == parts_before
    assert UsageStore.open(store).read_calls().num_rows == 3
    assert "0 new calls, 3 already in the store" in again.paragraph()


def test_overlapping_files_add_only_what_is_new(tmp_path):
    store = str(tmp_path / "store")
    import_logs([str(three_calls(tmp_path))], store)
    more = write_jsonl(tmp_path / "more.jsonl", [openai_record("Book LH400", response_id="r1"),
                                                 openai_record("Book LH999", response_id="r9")])
    summary = import_logs([str(more), str(more)], store)
    assert (summary.new, summary.present, summary.repeated) == (1, 1, 2)
    ids = UsageStore.open(store).read_calls(["call_id"]).column("call_id").to_pylist()
    assert len(ids) == len(set(ids)) == 4


def test_only_parts_the_manifest_lists_are_read(tmp_path):
    store = str(tmp_path / "store")
    import_logs([str(three_calls(tmp_path))], store)
    (tmp_path / "store" / "calls" / "part-orphan.parquet").write_bytes(b"left by a killed import")
    assert UsageStore.open(store).read_calls().num_rows == 3


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("a file"), "a file, not a store folder"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "holds files but no manifest.json"),
    (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{broken")), "manifest.json cannot be read"),
    (lambda p: (p.mkdir(), (p / "manifest.json").write_text('{"kind": "other"}')), "not a usage store's manifest"),
])
def test_what_is_not_a_store_is_refused_before_anything_is_written(tmp_path, make, message):
    target = tmp_path / "store"
    make(target)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(StoreError, match=message):
        import_logs([str(three_calls(tmp_path, "x.jsonl"))], str(target))
    assert sorted(str(p) for p in tmp_path.rglob("*") if p.name != "x.jsonl") == before


def test_a_missing_part_is_reported(tmp_path):
    store = str(tmp_path / "store")
    import_logs([str(three_calls(tmp_path))], store)
    for part in (tmp_path / "store" / "calls").iterdir():
        part.unlink()
    with pytest.raises(StoreError, match=r"calls/part-\w+\.parquet cannot be read"):
        import_logs([str(three_calls(tmp_path))], store)


def test_a_bad_log_file_stops_the_import_before_the_store_is_touched(tmp_path):
    with pytest.raises(LogFileError, match="no such file"):
        import_logs([str(three_calls(tmp_path)), str(tmp_path / "missing.jsonl")], str(tmp_path / "store"))
    assert not (tmp_path / "store").exists()


def test_a_store_in_a_bucket_is_written_through_its_local_copy(tmp_path, monkeypatch):
    import fsspec

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "cache"))
    fs = fsspec.filesystem("memory")
    uri = "memory://usage-test-bucket/store"
    try:
        first = import_logs([str(three_calls(tmp_path))], uri)
        assert fs.exists("/usage-test-bucket/store/manifest.json") and first.new == 3
        assert not any(".lock" in p for p in fs.find("/usage-test-bucket/store"))  # working files stay local
        import shutil

        shutil.rmtree(tmp_path / "cache")  # another machine: the copy is pulled from the bucket
        again = import_logs([str(three_calls(tmp_path))], uri)
        assert (again.new, again.present) == (0, 3)
    finally:
        fs.rm("/usage-test-bucket", recursive=True)


# -- nothing planted survives anywhere in the store ---------------------------------------------

PLANTED_VALUES = [
    "Aisha", "Okafor", "ops@acme-travel.io", "Maria", "Gonzalez", "4539 1488 0343 6467", "4539148803436467",
    "DE89 3704 0044 0532 0130 00", "DE89370400440532013000", "536-22-1847", "Elm Street", "Springfield", "62704",
    "+44 20 7946 0958", "7946 0958", "Sven", "Eriksson", "sk-proj-Xy12Ab34Cd56Ef78Gh90Ij12Kl34", "203.0.113.42",
    "maria.gonzalez@gmx.de", "Priya", "Raghunathan", "priya.r@outlook.in", "ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
    "jane.roe@acme-corp.io", "Kenji", "Watanabe", "AB 12 34 56 C", "Baker Street", "NW1 6XE", "2001:db8::8a2e:370:7334",
    "AKIA2E0A8F3B244C9986", "RSSMRA85T10A562S",
]


def planted_logs(tmp_path):
    address = "42 Elm Street, Springfield, IL 62704"
    history = [{"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function", "function": {
                   "name": "book_flight", "arguments": json.dumps({"passenger_name": "Maria Gonzalez", "flight": "LH400",
                                                                   "address": address})}}]},
               {"role": "tool", "tool_call_id": "c1", "content": json.dumps({
                   "status": "ok", "agent": "Sven Eriksson", "api_key": "sk-proj-Xy12Ab34Cd56Ef78Gh90Ij12Kl34",
                   "server": "203.0.113.42", "codice_fiscale": "RSSMRA85T10A562S"})}]
    tools = [{"type": "function", "function": {"name": "book_flight", "description":
              "Contact Priya Raghunathan at priya.r@outlook.in for access", "parameters": {"type": "object"}}}]
    user = ("Hi, my name is Maria Gonzalez. Card 4539 1488 0343 6467, IBAN DE89 3704 0044 0532 0130 00, "
            f"SSN 536-22-1847. I live at {address}. Call +44 20 7946 0958.")
    openai_log = write_jsonl(tmp_path / "agent.jsonl", [
        openai_record(user, "Done, Maria Gonzalez. Sven Eriksson will call +44 20 7946 0958.",
                      system="You assist Dr. Aisha Okafor. Escalate to ops@acme-travel.io.", history=history,
                      tool_calls=[("send_sms", {"to": "+442079460958", "iban": "DE89370400440532013000"})],
                      tools=tools, params={"user": "maria.gonzalez@gmx.de"}, client_id="maria.gonzalez@gmx.de"),
        openai_record("retry please", error={"type": "invalid_request_error", "message":
                      "Invalid API key ghp_aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5 for user jane.roe@acme-corp.io"}),
        json.dumps({"request": {"messages": [{"role": "wizard", "content": "AKIA2E0A8F3B244C9986"}]}, "response": {}}),
    ])
    spans = write_jsonl(tmp_path / "spans.jsonl", [otel_export([
        new_form_span("n1", "Book for Kenji Watanabe, NI number AB 12 34 56 C",
                      tool_call=("book_flight", {"passenger_name": "Kenji Watanabe", "flight": "JL44"}),
                      tool_result=("book_flight", {"passenger_name": "Kenji Watanabe"},
                                   {"address": "221B Baker Street, London NW1 6XE"})),
        old_form_span("o1", "Please confirm.\nRegards,\nPriya Raghunathan",
                      "Noted, Priya Raghunathan: use 2001:db8::8a2e:370:7334"),
    ])])
    return [str(openai_log), str(spans)]


def test_no_planted_value_is_left_in_any_file_of_the_store(tmp_path):
    summary = import_logs(planted_logs(tmp_path), str(tmp_path / "store"))
    assert summary.new == 4 and len(summary.malformed) == 1  # the data is there, redacted
    files = [p for p in (tmp_path / "store").rglob("*") if p.is_file()]
    assert len(files) >= 3
    texts = {str(p): p.read_bytes().decode("utf-8", "replace") for p in files}
    # Parquet compresses its pages, so the decoded rows are searched as well as the bytes.
    texts["decoded rows"] = json.dumps(UsageStore.open(str(tmp_path / "store")).read_calls().to_pylist(),
                                       default=str, ensure_ascii=False)
    texts["summary"] = summary.paragraph() + "\n".join(summary.malformed_lines())
    left = [(value, where) for value in PLANTED_VALUES for where, text in texts.items() if value in text]
    assert left == []
    assert "<PERSON_1>" in texts["decoded rows"] and "<IBAN_1>" in texts["decoded rows"]  # redacted, not lost
