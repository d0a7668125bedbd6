"""`distill usage clusters` and `distill usage demo-logs`: a table or JSON, the report written into
the store, and for bad input one clear paragraph, exit 2 and no traceback."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.usage import UsageStore


def run(*args):
    result = CliRunner().invoke(app, ["usage", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def store(demo, tmp_path):
    """A copy of the demo store (the command writes its report into it)."""
    shutil.copytree(demo.store, tmp_path / "store")
    return tmp_path / "store"


def test_a_table_of_the_clusters_and_one_paragraph(store):
    result = run("clusters", str(store))
    assert result.exit_code == 0, result.output
    for text in ("travel-desk", "tool call", "extraction", "classification", "free text", "acme-llm-70b",
                 "unknown (no price)", "gpt-4o", "untagged joined"):
        assert text in result.output, text
    paragraph = result.output.strip().splitlines()[-1]
    r = json.loads(UsageStore.open(str(store)).clusters_path.read_text())
    assert paragraph.startswith(f"{r['calls']} calls in 6 clusters: {r['tagged']} tagged by workload_id, {r['untagged']} "
                                f"untagged ({r['untagged']} of them joined a tagged workload). Automatic clustering of "
                                f"all calls: {r['automatic']['clusters']} clusters, chosen by silhouette"), paragraph
    assert "Cost: $" in paragraph and "unknown for acme-llm-70b" in paragraph
    assert paragraph.endswith(f"Written into {store} (clusters.json, clusters.parquet).")


def test_json_is_the_report_the_store_keeps(store):
    result = run("clusters", str(store), "--key", "none", "--k", "6", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report == json.loads(UsageStore.open(str(store)).clusters_path.read_text())
    assert report["key"] is None and report["automatic"]["chosen_by"] == "--k" and len(report["clusters"]) == 6


def empty_store(p):
    (p / "store").mkdir()
    (p / "store" / "manifest.json").write_text(json.dumps({"kind": "distill usage store", "version": 1, "parts": [],
                                                           "imports": []}))


@pytest.mark.parametrize("args, setup, message", [
    (["missing"], None, "missing: no usage store here (no manifest.json); import logs into it first: "
                        "distill usage import FILE... --to missing"),
    (["folder"], lambda p: ((p / "folder").mkdir(), (p / "folder" / "x.txt").write_text("x")),
     "folder: holds files but no manifest.json, so it is not a usage store"),
    (["store"], empty_store, "store: holds no calls yet; import logs into it first"),
    (["store", "--key", "colour"], empty_store, "--key 'colour': not a key calls can be tagged by; give one of "
                                                "workload_id, client_id"),
    (["store", "--prices", "nope.yaml"], empty_store, "nope.yaml: no such file; give a price table"),
    (["store", "--k", "0"], empty_store, "Invalid value for '--k'"),
])
def test_bad_input_exits_2_with_one_paragraph(tmp_path, monkeypatch, args, setup, message):
    monkeypatch.chdir(tmp_path)
    if setup:
        setup(tmp_path)
    result = run("clusters", *args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()), result.output
    if "Invalid value" not in message:  # typer's own usage errors have their box
        assert len(result.output.strip().split("\n\n")) == 1
    assert not (tmp_path / "missing").exists() and not (tmp_path / "store" / "clusters.json").exists()


def test_demo_logs_writes_the_log_and_the_truth_beside_it(tmp_path):
    out = tmp_path / "agent.jsonl"
    result = run("demo-logs", str(out), "--calls", "120", "--seed", "4", "--untagged", "0.5")
    assert result.exit_code == 0, result.output
    assert len(out.read_text().splitlines()) == 120
    truth = json.loads((tmp_path / "agent.workloads.json").read_text())
    assert len(truth["lines"]) == 120 and truth["seed"] == 4
    text = " ".join(result.output.split())
    assert text.startswith(f"Wrote 120 calls of 6 workloads (") and "without workload_id" in text
    assert f"The true workload of every line is in {tmp_path / 'agent.workloads.json'} (the import does not read it)" in text
    assert run("demo-logs", str(out), "--untagged", "1.5").exit_code == 2
