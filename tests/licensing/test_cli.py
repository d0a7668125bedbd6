"""The licence engine at the command line: refusals before any compute, obligations printed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from distill.cli import app
from distill.pipeline import LicenceRefused, run_pipeline
from distill.recipe import load_recipe


def recipe(tmp_path, teacher="llama-3.1-405b-instruct", student="arith-student", **student_extra):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "lic",
        "teacher": teacher,
        "prompts": {"train": [{"source": "arithmetic", "count": 3}]},
        "student": {"name": student, "base": "smollm2-135m-instruct", **student_extra},
        "tracking": {"wandb": "disabled"},
    }))
    return path


def invoke(*args):
    return CliRunner().invoke(app, list(map(str, args)))


def test_validate_refuses_a_llama_teacher_for_a_student_not_named_llama(tmp_path):
    r = invoke("validate", recipe(tmp_path))
    assert r.exit_code == 2
    out = r.output
    assert "REFUSED llama3.1:name-prefix" in out
    assert "§1.b.i" in out  # the clause
    assert "ways out:" in out and "rename" in out.lower()


def test_run_refuses_before_any_compute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = invoke("run", recipe(tmp_path))
    assert r.exit_code == 2 and "REFUSED llama3.1:name-prefix" in r.output
    assert not (tmp_path / "runs").exists()  # not even a run directory

    class NoBackend:
        def describe(self):
            raise AssertionError("sampling must not start")

    with pytest.raises(LicenceRefused, match="llama3.1:name-prefix"):
        run_pipeline(load_recipe(recipe(tmp_path)), backend=NoBackend())


def test_renaming_the_student_is_a_way_out_and_the_obligations_are_printed(tmp_path):
    r = invoke("validate", recipe(tmp_path, student="Llama-arith-135m"))
    assert r.exit_code == 0, r.output
    assert "licence decision: allowed-with-obligations" in r.output
    assert "Built with Llama" in r.output


def test_an_acknowledgement_is_explicit_and_recorded(tmp_path, monkeypatch):
    ack = [{"rule": "llama3.1:name-prefix", "reason": "written permission from the licensor, ticket 42"}]
    path = recipe(tmp_path, acknowledge=ack)
    r = invoke("validate", path)
    assert r.exit_code == 0, r.output
    assert "ACKNOWLEDGED llama3.1:name-prefix: written permission from the licensor, ticket 42" in r.output
    monkeypatch.chdir(tmp_path)
    run, _ = run_pipeline(load_recipe(path), until="prompts")
    recorded = json.loads((run.dir / "licence.json").read_text())
    assert recorded["acknowledged"] == ack

    data = yaml.safe_load(path.read_text())
    data["student"]["acknowledge"] = [{"rule": "llama3.1:name-prefix"}]  # no reason: not an acknowledgement
    path.write_text(yaml.safe_dump(data))
    r = invoke("validate", path)
    assert r.exit_code == 2 and "student.acknowledge[0].reason: required key is missing" in r.output


def test_licence_command_prints_the_decision_without_running_anything(tmp_path):
    r = invoke("licence", recipe(tmp_path, teacher="smollm2-135m-instruct"))
    assert r.exit_code == 0, r.output
    assert "licence decision: allowed" in r.output and "student licence: apache-2.0" in r.output
    r = invoke("licence", "--json", recipe(tmp_path))
    assert r.exit_code == 2
    decision = json.loads(r.output)
    assert decision["verdict"] == "refused" and decision["name_prefix"] == "Llama"


def test_the_demo_recipe_is_allowed_with_only_the_apache_notice():
    demo = Path(__file__).resolve().parents[2] / "recipes" / "demo" / "smollm2-135m-from-smollm2-135m.yaml"
    r = invoke("licence", "--json", demo)
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["verdict"] == "allowed" and d["student_licence"]["license"] == "apache-2.0"
    assert {o["licence"] for o in d["obligations"]} == {"apache-2.0"}
    assert all(o["routine"] for o in d["obligations"])
