"""The filter stage: filters run in order over accepted samples; drop, mark and redact are each
recorded per sample with the reason, counted, and honoured by the dataset. Also the verifier in
the loop (re-sampling rounds) and a model verifier (the judge) in the sample stage."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from distill.pipeline import run_pipeline
from distill.recipe import load_recipe
from support.fakes import QUESTIONS, FakeBackend, write_recipe


class ScriptedBackend:
    """Right answers to 'What is a + b?', each sample index with its own kind of text:
    0 plain, 1 with an e-mail address, 2 a refusal, 3 a long ramble, later ones plain again."""

    name = "scripted"

    def describe(self):
        return {"backend": self.name, "version": "1", "engine_args": {}}

    def generate(self, requests):
        out = []
        for r in requests:
            q = r["messages"][-1]["content"]
            index = int(r["work_id"].rsplit(":", 1)[1])
            nums = [int(x) for x in q.replace("?", " ").split() if x.isdigit()]
            answer = f"The answer is {sum(nums)}."
            text = {1: f"Mail bob@corp.example.net for help. {answer}",
                    2: f"I'm sorry, but I can't help with that. {answer}",
                    3: "Let me think about this for a long while. " * 5 + answer}.get(index, answer)
            out.append({"work_id": r["work_id"], "text": text, "prompt_tokens": 9, "completion_tokens": len(text.split()),
                        "finish_reason": "stop", "error": ""})
        yield out


def recipe_file(tmp_path, **extra):
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question": f"What is {a} + {b}?", "answer": str(a + b)}) + "\n"
                                              for a, b in ((1, 2), (3, 4), (5, 6))))
    recipe = {
        "name": "filters-unit", "teacher": "smollm2-135m-instruct",
        "prompts": {"train": [{"source": "jsonl", "path": "q.jsonl", "answer_field": "answer", "licence": "mit"}]},
        "sampling": {"n": 4, "max_tokens": 64},
        "verifiers": [{"name": "final-number"}],
        "filters": [
            {"name": "pii", "kinds": ["email"], "allow": []},
            {"name": "safety", "mode": "drop", "categories": ["refusal"]},
            {"name": "length", "mode": "mark", "max": 20},
        ],
        "tracking": {"wandb": "disabled"},
        **extra,
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "r.yaml"


@pytest.fixture
def filtered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return run_pipeline(load_recipe(recipe_file(tmp_path)), until="dataset", backend=ScriptedBackend())


def test_each_decision_is_recorded_with_its_reason(filtered):
    run, summaries = filtered
    decisions = {r["sample_id"]: r for r in pq.read_table(run.dir / "filters" / "decisions.parquet").to_pylist()}
    samples = {r["sample_id"]: r for r in run.files.read_samples().to_pylist()}
    assert set(decisions) == set(samples)  # every sample was accepted, so every one was judged
    by_index = {}
    for sid, d in decisions.items():
        by_index.setdefault(samples[sid]["sample_index"], []).append(d)
    for d in by_index[0]:
        assert d["kept"] and [x["action"] for x in d["decisions"]] == ["passed", "passed", "passed"]
    for d in by_index[1]:  # redacted, then passed on with the new text
        assert d["kept"] and d["decisions"][0]["action"] == "redacted" and "[EMAIL]" in d["completion"]
        assert "bob@corp" not in d["completion"] and "e-mail" in d["decisions"][0]["reason"]
    for d in by_index[2]:  # dropped by safety: the length filter never saw it
        assert not d["kept"] and d["completion"] is None
        assert [x["action"] for x in d["decisions"]] == ["passed", "dropped"]
        assert d["decisions"][1]["category"] == "refusal"
    for d in by_index[3]:  # too long: only marked
        assert d["kept"] and d["decisions"][2]["action"] == "marked" and "above max 20" in d["decisions"][2]["reason"]


def test_the_summary_counts_each_filter(filtered):
    run, summaries = filtered
    s = summaries["filter"]
    assert (s["candidates"], s["kept"]) == (12, 9)
    pii, safety, length = s["filters"]
    assert (pii["filter"], pii["seen"], pii["flagged"], pii["redacted"], pii["dropped"]) == ("pii", 12, 3, 3, 0)
    assert (safety["seen"], safety["dropped"], safety["by_category"]) == (12, 3, {"refusal": 3})
    assert (length["seen"], length["marked"], length["dropped"], length["by_category"]) == (9, 3, 0, {"too long": 3})
    assert json.loads((run.dir / "filters" / "summary.json").read_text())["kept"] == 9


def test_the_dataset_honours_the_filters(filtered):
    run, summaries = filtered
    rows = run.files.read_dataset().to_pylist()
    assert len(rows) == 9
    texts = [r["completion"][0]["content"] for r in rows]
    assert not any("sorry" in t for t in texts) and not any("bob@corp" in t for t in texts)
    assert sum("[EMAIL]" in t for t in texts) == 3
    assert sorted(tuple(r["flags"]) for r in rows) == [()] * 6 + [("length",)] * 3
    manifest = summaries["dataset"]
    assert manifest["dropped"] == {"filter safety": 3}
    assert [f["filter"] for f in manifest["filters"]] == ["pii", "safety", "length"]
    card = (run.dir / "dataset" / "README.md").read_text()
    assert "| safety | drop | 12 | 3 | 3 | 0 | 0 | refusal (3) |" in card


def test_the_report_shows_the_filters(filtered):
    from distill.stages.report import build_report

    page = build_report(filtered[0].dir).read_text()
    assert "<td>safety</td><td>drop</td><td>12</td><td>3</td><td>3</td>" in page
    assert "refusal: 3" in page and "Sampling rounds" not in page  # one round: no rounds section


def test_a_rerun_reuses_the_decisions(filtered, monkeypatch):
    run, _ = filtered
    import distill.filters.safety as safety

    monkeypatch.setattr(safety, "rule_hit", lambda *a: pytest.fail("filters ran again"))
    _, again = run_pipeline(run.recipe, until="filter", backend=ScriptedBackend())
    assert again["filter"]["kept"] == 9


def test_no_filters_keeps_every_accepted_sample(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run, summaries = run_pipeline(load_recipe(recipe_file(tmp_path, filters=[])), until="dataset",
                                  backend=ScriptedBackend())
    assert summaries["filter"] == {**summaries["filter"], "candidates": 12, "kept": 12, "filters": []}
    assert summaries["dataset"]["rows"] == 12


class LateBackend(FakeBackend):
    """Like FakeBackend, but right about 2 + 2 from sample index 3 on (a later round)."""

    def generate(self, requests):
        for batch in super().generate(requests):
            for r in batch:
                if int(r["work_id"].rsplit(":", 1)[1]) >= 3 and r["text"]:
                    r["text"] = "The answer is 4."
            yield batch


def test_verifier_in_the_loop_resamples_short_prompts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["sampling"].update({"accepted_per_prompt": 2, "max_rounds": 3})
    path.write_text(yaml.safe_dump(data))
    backend = LateBackend()
    run, summaries = run_pipeline(load_recipe(path), until="sample", backend=backend)
    rows = run.files.read_samples().to_pylist()
    per_prompt = {}
    for r in rows:
        per_prompt.setdefault(r["prompt_text"], []).append(r["sample_index"])
    # 1 + 2 is right from the start (round 0 only); 2 + 2 passes in round 1 (3 on, right: 3 >= 2);
    # the colour (no reference) and boom (errors) never pass: all three rounds.
    assert sorted(per_prompt["What is 1 + 2?"]) == [0, 1, 2]
    assert sorted(per_prompt["What is 2 + 2?"]) == [0, 1, 2, 3, 4, 5]
    assert sorted(per_prompt["Name a colour."]) == list(range(9))
    assert sorted(per_prompt["boom"]) == list(range(9))
    s = summaries["sample"]
    assert [(r["round"], r["samples"], r["accepted"]) for r in s.rounds] == [(0, 12, 3), (1, 9, 3), (2, 6, 0)]
    assert len(s.never_passed) == 2
    # seeds differ between rounds: every sample has its own
    assert len({r["seed"] for r in rows}) == len(rows)
    from distill.stages.report import build_report

    page = build_report(run.dir).read_text()
    assert "Accept rate per sampling round" in page and "2 prompts never had an accepted sample" in page
    assert "Name a colour." in page
    # A rerun has nothing left to do.
    backend.seen.clear()
    run_pipeline(load_recipe(path), until="sample", backend=backend)
    assert backend.seen == []


def test_rounds_need_a_target_and_a_required_verifier(tmp_path):
    from distill.recipe import RecipeError

    path = write_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["sampling"]["max_rounds"] = 3
    data["verifiers"] = []
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="set accepted_per_prompt too"):
        load_recipe(path)
    data["sampling"]["accepted_per_prompt"] = 1
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="add a required verifier"):
        load_recipe(path)


class Judge:
    def __init__(self):
        self.calls = 0

    def generate(self, requests):
        self.calls += 1
        yield [{"work_id": r["work_id"], "error": "",
                "text": "VERDICT: CORRECT" if "The answer is 3." in r["messages"][0]["content"] else "VERDICT: INCORRECT"}
               for r in requests]


def test_a_judge_grades_after_the_teacher_and_decides_acceptance(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["verifiers"] = [{"name": "judge", "model": "smollm2-135m-instruct"}]
    path.write_text(yaml.safe_dump(data))
    judge, served = Judge(), []
    run, summaries = run_pipeline(load_recipe(path), until="sample", backend=FakeBackend(),
                                  backend_for=lambda model: served.append(model.id) or judge)
    rows = run.files.read_samples().to_pylist()
    live = [r for r in rows if not r["error"]]
    assert served == ["smollm2-135m-instruct"] and judge.calls == 1  # one judge, once, after sampling
    assert all([v["verifier"] for v in r["verdicts"]] == ["judge"] for r in live)
    assert all(r["accepted"] for r in live)  # the fake teacher always says 3, the fake judge likes that
    assert summaries["sample"].per_verifier["judge"]["passed"] == len(live) == len(QUESTIONS[:3]) * 3


def test_the_filter_stage_merges_the_sampling_parts_and_a_rerun_samples_nothing_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(write_recipe(tmp_path))
    backend = FakeBackend(batch_size=1)
    run, _ = run_pipeline(recipe, until="sample", backend=backend)
    assert len(run.files.sample_parts()) == 12  # one part per batch of one
    before = sorted(run.files.read_samples().to_pylist(), key=lambda r: r["sample_id"])
    run_pipeline(recipe, until="filter", backend=backend)
    parts = run.files.sample_parts()
    assert len(parts) == 1 and parts[0].name.startswith("part-merged-")
    assert sorted(p.name for p in run.files.samples_dir.iterdir()) == ["attempts.json", parts[0].name]
    assert sorted(run.files.read_samples().to_pylist(), key=lambda r: r["sample_id"]) == before
    backend.seen.clear()
    _, summaries = run_pipeline(recipe, until="dataset", backend=backend)
    assert backend.seen == [] and summaries["sample"].samples_total == 12
    assert summaries["dataset"]["rows"] == 1
