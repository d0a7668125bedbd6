"""`distill usage import`: a one-paragraph summary, malformed records listed (the first 20, then a
count), progress lines, and for bad input a clear message, exit 2 and no traceback."""

import json

import pytest
from typer.testing import CliRunner

from distill.cli import app
from support.usage_logs import openai_record, write_jsonl


def run(*args):
    result = CliRunner().invoke(app, ["usage", "import", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def test_import_prints_one_paragraph(tmp_path):
    log = write_jsonl(tmp_path / "calls.jsonl", [
        openai_record("Book LH400 for Maria Gonzalez, phone +44 20 7946 0958", response_id="a"),
        openai_record("x", error={"type": "rate_limit", "message": "slow down"}),
        "{oops",
    ])
    result = run(str(log), "--to", str(tmp_path / "store"))
    assert result.exit_code == 0, result.output
    assert f"malformed: {log}:3: not JSON" in result.output
    assert "read logs: 1/1" in result.output and "redact: 2/2" in result.output  # progress, as lines off a terminal
    paragraph = result.output.strip().splitlines()[-1]
    for part in (f"Imported 1 file(s) into {tmp_path / 'store'}", "2 new calls, 0 already in the store",
                 "1 malformed record(s) skipped", "1 failed (1 error)", "0 duplicates",
                 "1 call(s) redacted before writing (1 phone, 1 person)", "Detectors:"):
        assert part in paragraph, paragraph
    again = run(str(log), "--to", str(tmp_path / "store"))
    assert "0 new calls, 2 already in the store" in again.output


def test_the_first_20_malformed_records_are_listed_then_counted(tmp_path):
    log = write_jsonl(tmp_path / "calls.jsonl", [openai_record("hi")] + ["not json"] * 25)
    result = run(str(log), "--to", str(tmp_path / "store"))
    assert result.exit_code == 0
    listed = [line for line in result.output.splitlines() if line.startswith("malformed: ")]
    assert len(listed) == 20 and listed[0] == f"malformed: {log}:2: not JSON (Expecting value at column 1)"
    assert "... and 5 more malformed records" in result.output
    assert "25 malformed record(s) skipped" in result.output


def broken_store(tmp_path):
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "manifest.json").write_text("{not json")


@pytest.mark.parametrize("args, setup, message", [
    (["missing.jsonl"], None, "missing.jsonl: no such file; give the path of a log file"),
    (["empty.jsonl"], lambda p: (p / "empty.jsonl").write_text(""), "empty.jsonl: no readable record: it is empty"),
    (["junk.jsonl"], lambda p: (p / "junk.jsonl").write_text("a\nb\n"), "junk.jsonl: no readable record: none of its first 100 lines is JSON"),
    (["bad.jsonl"], lambda p: (p / "bad.jsonl").write_text(json.dumps({"request": {}, "response": {}}) + "\n"),
     "bad.jsonl: no readable record (1 malformed; the first: bad.jsonl:1: request: messages is not a non-empty list"),
    (["ok.jsonl"], lambda p: (broken_store(p), write_jsonl(p / "ok.jsonl", [openai_record("hi")])),
     "manifest.json cannot be read"),
    (["ok.jsonl", "--format", "csv"], lambda p: write_jsonl(p / "ok.jsonl", [openai_record("hi")]),
     "--format: unknown format 'csv'; formats: auto, openai, otel"),
])
def test_bad_input_exits_2_with_what_where_and_what_to_do(tmp_path, monkeypatch, args, setup, message):
    monkeypatch.chdir(tmp_path)
    if setup:
        setup(tmp_path)
    result = run(*args, "--to", "store")
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    assert len(result.output.strip().splitlines()) <= 3
    assert not (tmp_path / "store" / "calls").exists()  # nothing was written


def test_a_store_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "store").write_text("x")
    log = write_jsonl(tmp_path / "ok.jsonl", [openai_record("hi")])
    result = run(str(log), "--to", str(tmp_path / "store"))
    assert result.exit_code == 2 and "a file, not a store folder" in result.output
