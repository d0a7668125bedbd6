"""The licence decision of a loaded recipe: teacher and base as the recipe resolved them, once."""

from __future__ import annotations

import json

import pytest
import yaml

from distill.licensing import LicenceError
from distill.recipe import RecipeError, load_recipe
from distill.recipe.licence import decide_for_recipe


def write_recipe(tmp_path, teacher="llama-3.1-405b-instruct", student=None, evals=()):
    data = {
        "name": "lic",
        "teacher": teacher,
        "prompts": {"train": [{"source": "arithmetic", "count": 3}],
                    "eval": [{"source": "arithmetic", "count": 2, "seed": 9, "licence": x} for x in evals]},
        "tracking": {"wandb": "disabled"},
    }
    if student is not None:
        data["student"] = student
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def model_dir(tmp_path, name, card: str | None = None, meta: dict | None = None):
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text("{}")
    if card is not None:
        (d / "README.md").write_text(card)
    if meta is not None:
        (d / "distill.json").write_text(json.dumps(meta))
    return d


def test_teacher_and_base_licences_come_from_their_entries(tmp_path):
    d = decide_for_recipe(load_recipe(write_recipe(tmp_path, student={"name": "smol-math",
                                                                     "base": "smollm2-135m-instruct"})))
    assert d.verdict == "refused"
    assert [i.rule for i in d.refusals] == ["llama3.1:name-prefix"]
    labels = {s.label: s.licence for s in d.sources}
    assert labels["teacher llama-3.1-405b-instruct"] == "llama3.1"
    assert labels["base smollm2-135m-instruct"] == "apache-2.0"
    assert labels["prompts.train[0] arithmetic"] == "apache-2.0"


def test_acknowledgements_and_eval_prompt_licences_are_read(tmp_path):
    student = {"name": "smol-math", "base": "smollm2-135m-instruct",
               "acknowledge": [{"rule": "llama3.1:name-prefix", "reason": "internal only"}]}
    d = decide_for_recipe(load_recipe(write_recipe(tmp_path, student=student, evals=("cc-by-4.0",))))
    assert d.verdict == "allowed-with-obligations"
    assert d.acknowledged[0].rule == "llama3.1:name-prefix"
    assert ("cc-by-4.0", "attribution") in {(o.licence, o.kind) for o in d.obligations}


def test_without_a_student_the_student_rules_are_deferred(tmp_path):
    d = decide_for_recipe(load_recipe(write_recipe(tmp_path)))
    assert d.student_licence is None and d.name_prefix == "Llama"


def test_a_local_base_takes_its_licence_from_its_model_card(tmp_path):
    model_dir(tmp_path, "my-base", card="---\nlicense: other\nlicense_name: gemma\n---\n# my base\n")
    recipe = load_recipe(write_recipe(tmp_path, teacher="smollm2-135m-instruct",
                                      student={"name": "x", "base": "my-base"}))
    assert recipe.student_base.licence == "gemma"
    assert decide_for_recipe(recipe).student_licence.license == "gemma"


def test_a_local_base_without_a_known_licence_is_refused_with_the_ways_out(tmp_path):
    model_dir(tmp_path, "bare")
    recipe = load_recipe(write_recipe(tmp_path, teacher="smollm2-135m-instruct",
                                      student={"name": "x", "base": "bare"}))
    with pytest.raises(LicenceError, match="student.base_licence"):
        decide_for_recipe(recipe)


def test_a_declared_base_licence_is_the_one_every_reader_sees(tmp_path):
    """The licence engine, train/summary.json's base record, the student's distill.json and the
    evaluation's model entry all read recipe.student_base: `mit`, never `unknown`."""
    model_dir(tmp_path, "bare")
    recipe = load_recipe(write_recipe(tmp_path, teacher="smollm2-135m-instruct",
                                      student={"name": "x", "base": "bare", "base_licence": "mit"}))
    assert decide_for_recipe(recipe).student_licence.license == "mit"
    assert recipe.student_base.record()["licence"] == "mit"
    assert recipe.student_base is recipe.student_base  # resolved once


def test_a_declared_base_licence_that_contradicts_the_base_is_a_recipe_problem(tmp_path):
    model_dir(tmp_path, "made", meta={"licence": "apache-2.0"})
    with pytest.raises(RecipeError, match="student.base: student.base_licence 'mit' contradicts"):
        load_recipe(write_recipe(tmp_path, teacher="smollm2-135m-instruct",
                                 student={"name": "x", "base": "made", "base_licence": "mit"}))
    with pytest.raises(RecipeError, match="contradicts teacher entry 'smollm2-135m-instruct'"):
        load_recipe(write_recipe(tmp_path, teacher="smollm2-135m-instruct",
                                 student={"name": "x", "base": "smollm2-135m-instruct", "base_licence": "mit"}))
