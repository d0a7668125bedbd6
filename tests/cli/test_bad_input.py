"""Every command given bad input: a short error that says what and where, the documented exit
code, and never a Python traceback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from distill.cli import app

DEMO = "recipes/demo/smollm2-135m-from-smollm2-135m.yaml"


@pytest.fixture
def place(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # keep the jobs client from changing this process's settings
    (tmp_path / "bad.yaml").write_text("name: x\nteacher: [unclosed\n")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "recipe.resolved.yaml").write_text("recipe: {sampling: [not, a, mapping]}\n")
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "recipe.resolved.yaml").write_text("key: [unclosed\n")
    (tmp_path / "store.sqlite").write_text("not a database")
    from pathlib import Path

    demo = Path(__file__).resolve().parents[2] / DEMO
    (tmp_path / "demo.yaml").write_text(demo.read_text())
    return tmp_path


CASES = [
    (["validate", "missing.yaml"], 2, "missing.yaml: (file): no such file"),
    (["validate", "bad.yaml"], 2, "bad.yaml: (file): not valid YAML: line 3"),
    (["run", "missing.yaml"], 2, "no such file"),
    (["run", "demo.yaml", "--until", "nosuch"], 2, "--until: unknown stage 'nosuch'"),
    (["licence", "bad.yaml"], 2, "not valid YAML"),
    (["card", "nowhere"], 2, "nowhere: not a finished distill run"),
    (["report", "nowhere"], 2, "nowhere: not a distill run directory"),
    (["report", "corrupt"], 2, "corrupt: a file of the run directory cannot be read"),
    (["report", "garbled"], 2, "garbled: a file of the run directory cannot be read (not valid YAML"),
    (["ls", "nosuch"], 2, "nothing is registered as 'nosuch'"),
    (["lineage"], 2, "give exactly one of --teacher, --dataset, --licence, --model"),
    (["lineage", "--model", "m", "--store", "sqlite:///store.sqlite"], 2,
     "the lineage store (sqlite:///store.sqlite) cannot be read: file is not a database"),
    (["status", "x", "--address", "http://127.0.0.1:9"], 1, "no Ray cluster answers at http://127.0.0.1:9"),
    (["submit", "demo.yaml", "--address", "http://127.0.0.1:9", "--output-dir", "nosuch://b/r"], 2,
     "fsspec knows no protocol 'nosuch'"),
]


@pytest.mark.parametrize("args, code, message", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_gets_a_clear_error_and_no_traceback(place, args, code, message):
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert message in " ".join(result.output.split()), result.output
    assert len(result.output.strip().splitlines()) <= 8  # one short paragraph, not a dump
