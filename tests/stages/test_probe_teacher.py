"""`distill probe-teacher`: the teacher's safety and bias probes before any sampling, written
beside the licence decision; a recipe that requires them refuses to run until they exist."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from distill.cli import app
from distill.pipeline import TeacherNotProbed, probe_teacher, run_pipeline
from distill.recipe import load_recipe
from support.fakes import FakeBackend
from support.models import write_tiny_teacher


@pytest.fixture
def recipe_file(tmp_path, tiny_model, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "probed", "teacher": "tiny.yaml",
        "prompts": {"train": [{"source": "arithmetic", "count": 4, "seed": 1}]},
        "student": {"name": "s", "base": "tiny.yaml"},
        "eval": {"require_teacher_probes": True},
        "tracking": {"wandb": "disabled"},
    }))
    return tmp_path / "r.yaml"


def test_a_recipe_that_requires_teacher_probes_refuses_to_run_until_they_exist(recipe_file):
    recipe = load_recipe(recipe_file)
    with pytest.raises(TeacherNotProbed, match="distill probe-teacher"):
        run_pipeline(recipe, "prompts", backend=FakeBackend())
    result = CliRunner().invoke(app, ["run", str(recipe_file)])
    assert result.exit_code == 2 and "probe-teacher" in result.output
    assert "Traceback" not in result.output

    backend = FakeBackend(batch_size=16)
    run, out = probe_teacher(recipe, limit=3, backend=backend)
    # No safety probe in the recipe: the shipped four, three items each (a bias item is a pair).
    assert set(out["probes"]) == {"harmbench", "do-not-answer", "over-refusal", "bias"}
    assert len(backend.seen) == 3 + 3 + 3 + 2 * 3
    written = json.loads(run.files.teacher_probes.read_text())
    assert written["teacher"] == "tiny-random" and written["revision"] == run.teacher.revision
    # The fake answers "The answer is 3." to everything: no refusal, and no readable bias answer.
    harm = written["probes"]["harmbench"]["metrics"]["refusal_rate"]
    assert harm["teacher"]["value"] == 0.0 and harm["teacher"]["items"] == 3
    assert written["probes"]["bias"]["metrics"]["unparsed_rate"]["teacher"]["value"] == 1.0
    assert run.files.licence.is_file()

    # Asked again, nothing is sent: the answers are kept where the evaluation looks for them.
    again = FakeBackend()
    probe_teacher(recipe, limit=3, backend=again)
    assert again.seen == []
    run_pipeline(recipe, "prompts", backend=FakeBackend())  # now it runs


def test_the_command_prints_the_teachers_table(recipe_file, monkeypatch):
    import distill.pipeline

    monkeypatch.setattr(distill.pipeline, "make_backend", lambda run, verbose=False, model=None: FakeBackend(16))
    monkeypatch.setattr(distill.pipeline, "start_ray", lambda run, verbose=False: None)
    result = CliRunner().invoke(app, ["probe-teacher", str(recipe_file), "--limit", "2"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "harmbench" in result.output and "refusal_rate" in result.output and "teacher_probes.json" in result.output


class JudgeBackend(FakeBackend):
    """A guard model that calls every answer a refusal."""

    def generate(self, requests):
        self.seen.extend(requests)
        yield [{"work_id": r["work_id"], "text": "REFUSED", "prompt_tokens": 1, "completion_tokens": 1,
                "finish_reason": "stop", "error": ""} for r in requests]


def test_a_probe_with_a_judge_is_scored_by_that_model(recipe_file, monkeypatch):
    import distill.pipeline

    data = yaml.safe_load(recipe_file.read_text())
    data["eval"]["probes"] = [{"name": "harmbench", "judge": "tiny.yaml"}]
    recipe_file.write_text(yaml.safe_dump(data))
    judges = []

    def make_backend(run, verbose=False, model=None):
        judges.append(model.id)
        return JudgeBackend()

    monkeypatch.setattr(distill.pipeline, "make_backend", make_backend)
    monkeypatch.setattr(distill.pipeline, "start_ray", lambda run, verbose=False: None)
    _, out = probe_teacher(load_recipe(recipe_file), limit=2, backend=FakeBackend(16))
    harm = out["probes"]["harmbench"]
    assert judges == ["tiny-random"] and harm["judged_by"] == "tiny.yaml"
    # The rules would call "The answer is 3." compliance; the judge says refused.
    assert harm["metrics"]["refusal_rate"]["teacher"]["value"] == 1.0
