"""`distill usage convert` at the command line: refused settings and stores give one clear
paragraph, exit 2 and no traceback; a log whose model's terms forbid training is converted to
nothing, with the clause, before any model runs."""

import json

from typer.testing import CliRunner

from distill.cli import app
from support.usage_logs import claude_store


def run(*args):
    result = CliRunner().invoke(app, ["usage", "convert", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def test_bad_settings_and_stores_exit_2_with_what_to_do(tmp_path):
    store = claude_store(tmp_path, "claude-3-5-sonnet")
    for args, words in (((store, "--min-relative", "0"), "--min-relative 0.0: give a share"),
                        ((store, "--max-format-errors", "3"), "--max-format-errors 3.0"),
                        ((store, "--targets", "logs"), "--targets 'logs'"),
                        ((str(tmp_path / "nowhere"),), "nowhere")):
        result = run(*args, "--out", str(tmp_path / "out"))
        assert result.exit_code == 2, result.output
        assert words in result.output and "the conversion stopped" in result.output, result.output


def test_a_refused_licence_converts_nothing_and_says_why(tmp_path):
    store = claude_store(tmp_path, "claude-3-5-sonnet")
    result = run(store, "--out", str(tmp_path / "out"), "--min-calls", "10")
    assert result.exit_code == 0, result.output
    (cluster,) = json.loads((tmp_path / "out" / "convert.json").read_text())["clusters"]
    assert cluster["decision"] == "not-converted" and cluster["student"] is None and cluster["baselines"] == []
    assert any("licence refused" in r for r in cluster["plan_reasons"])
    assert (tmp_path / "out" / "report.html").exists()
    assert "0%" in result.output  # the share of calls moved


def test_serve_config_writes_a_classifier_and_a_config_that_loads(tmp_path):
    from distill.serve.config import load_config
    from distill.usage.classifier import RequestClassifier

    store = claude_store(tmp_path, "claude-3-5-sonnet")
    assert run(store, "--out", str(tmp_path / "out"), "--min-calls", "10").exit_code == 0
    result = CliRunner().invoke(app, ["usage", "serve-config", str(tmp_path / "out"), "--fallback-url",
                                      "http://127.0.0.1:9/v1", "--fallback-model", "claude-3-5-sonnet"])
    assert result.exit_code == 0, result.output
    (cluster,) = json.loads((tmp_path / "out" / "convert.json").read_text())["clusters"]
    assert f"{cluster['id']}: not-converted; the fallback answers it" in result.output
    config = load_config(tmp_path / "out" / "serve.yaml")
    assert config.students == [] and config.fallback.model == "claude-3-5-sonnet"
    assert RequestClassifier.load(config.classifier).stale(store) is None  # learnt from that store, as it is

    missing = CliRunner().invoke(app, ["usage", "serve-config", str(tmp_path / "none"), "--fallback-url", "u",
                                       "--fallback-model", "m"])
    assert missing.exit_code == 2 and "run `distill usage convert" in missing.output and "Traceback" not in missing.output
