"""`distill usage plan`: a table and a paragraph, plan.json, and for bad input one clear paragraph,
exit 2 and no traceback."""

import json

import pytest
from typer.testing import CliRunner

from distill.cli import app
from support.usage_logs import claude_store


def run(*args):
    result = CliRunner().invoke(app, ["usage", "plan", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return claude_store(tmp_path_factory.mktemp("cli"), "claude-3-5-sonnet")


def test_a_table_a_paragraph_and_plan_json(store, tmp_path):
    result = run(store, "--out", str(tmp_path / "out"), "--min-calls", "10")
    assert result.exit_code == 0, result.output
    for text in ("cluster", "tool call", "claude-3-5-sonnet: anthropic-terms", "skipped", "licence refused"):
        assert text in result.output, text
    assert result.output.strip().splitlines()[-1] == (
        f"0 of 1 clusters chosen (clustered now); the plan is in {tmp_path / 'out' / 'plan.json'}. "
        "Nothing to convert: see why above.")
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert plan["settings"]["min_calls"] == 10 and plan["clusters"][0]["chosen"] is False


def test_a_licence_given_for_the_model_lets_it_through(store, tmp_path):
    result = run(store, "--out", str(tmp_path / "out"), "--min-calls", "10", "--logged-licence", "claude-*=mit", "--json")
    assert result.exit_code == 0, result.output
    (cluster,) = json.loads(result.output)["clusters"]
    assert cluster["chosen"] and (tmp_path / "out" / cluster["recipe"]).is_file()


@pytest.mark.parametrize("args, message", [
    (["missing", "--out", "OUT"], "missing: no usage store here (no manifest.json); import logs into it first: "
                                  "distill usage import FILE... --to missing"),
    (["STORE", "--out", "OUT", "--split", "newest"], "--split 'newest': give time (the latest calls held out) or random"),
    (["STORE", "--out", "OUT", "--heldout", "1.5"], "--heldout 1.5: give a share between 0 and 1, e.g. 0.1"),
    (["STORE", "--out", "OUT", "--logged-licence", "claude-*=anthropc"], "--logged-licence: unknown licence 'anthropc'"),
    (["STORE", "--out", "OUT", "--teacher", "no-such-teacher"], "no-such-teacher"),
    (["STORE", "--out", "FILE"], "--out FILE: a file, not a folder; give a new folder or an earlier plan's"),
])
def test_bad_input_is_one_paragraph_and_exit_2(store, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("x")
    result = run(*[store if a == "STORE" else a for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert result.output.strip().splitlines()[-1] == "no plan was written"
    assert not (tmp_path / "OUT").exists()


def test_folders_a_plan_did_not_write_are_never_replaced(store, tmp_path):
    (tmp_path / "out").mkdir()
    plan = json.loads(run(store, "--out", str(tmp_path / "x"), "--min-calls", "10", "--json").output)
    (tmp_path / "out" / plan["clusters"][0]["id"]).mkdir()
    result = run(store, "--out", str(tmp_path / "out"))
    assert result.exit_code == 2 and "already exist(s) there and no earlier plan wrote them" in result.output
