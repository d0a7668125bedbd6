import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

import distill.teachers as teachers
from distill.filters import FILTERS
from distill.prompts import PROMPT_SOURCES
from distill.recipe import RecipeError, load_recipe
from distill.teachers import catalog, load_teacher
from distill.verifiers import VERIFIERS

REQUIRED = {
    "deepseek-r1",
    "llama-3.1-405b-instruct",
    "qwen2.5-72b-instruct",
    "nemotron-4-340b-instruct",
    "gpt-oss-120b",
    "smollm2-135m-instruct",
}

MINE = """\
id: my-teacher
model: /models/my-teacher
revision: main
licence: apache-2.0
params_b: 7
serving:
  tensor_parallel_size: 2
"""


def test_catalog_has_the_required_teachers():
    assert REQUIRED <= set(catalog())


@pytest.mark.parametrize("tid", sorted(catalog()))
def test_shipped_teacher_loads_and_id_matches_file(tid):
    teacher = load_teacher(tid)
    assert teacher.id == tid == catalog()[tid].stem
    assert teacher.model and teacher.revision and teacher.licence
    assert teacher.params_b > 0


def test_shipped_id_must_match_file_name(tmp_path, monkeypatch):
    (tmp_path / "renamed.yaml").write_text(MINE)
    monkeypatch.setattr(teachers, "HERE", tmp_path)
    with pytest.raises(ValueError, match="id 'my-teacher' must match the file name"):
        load_teacher("renamed")


def test_unknown_id_lists_shipped_and_suggests_closest():
    with pytest.raises(ValueError) as info:
        load_teacher("llama-3.1-405b-instrct")
    message = str(info.value)
    assert "unknown teacher 'llama-3.1-405b-instrct'" in message
    assert "did you mean 'llama-3.1-405b-instruct'?" in message
    for tid in catalog():
        assert tid in message


def test_unknown_id_without_close_match():
    with pytest.raises(ValueError) as info:
        load_teacher("zzz")
    assert "did you mean" not in str(info.value)
    assert "or give the path of a teacher YAML file" in str(info.value)


def test_teacher_yaml_by_path_relative_to_base_dir(tmp_path):
    (tmp_path / "teachers").mkdir()
    (tmp_path / "teachers" / "mine.yaml").write_text(MINE)
    teacher = load_teacher("teachers/mine.yaml", tmp_path)
    assert (teacher.id, teacher.params_b, teacher.serving.tensor_parallel_size) == ("my-teacher", 7, 2)
    with pytest.raises(ValueError, match="unknown teacher 'teachers/mine.yaml'"):
        load_teacher("teachers/mine.yaml", tmp_path / "elsewhere")

    # The same file named from a recipe: relative to the recipe's folder.
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\nteacher: teachers/mine.yaml\nprompts:\n  train: [{source: arithmetic, count: 2}]\n")
    assert load_recipe(recipe).teacher.id == "teachers/mine.yaml"


@pytest.mark.parametrize(
    "text, fragment",
    [
        (MINE + "licence_url: https://example.com\n", "licence_url: unknown key"),
        (MINE.replace("params_b: 7", "params_b: -1"), "params_b: -1: input should be greater than 0"),
        (MINE.replace("serving:", "serving:\n  tensor_paralel_size: 2"), "serving.tensor_paralel_size: unknown key (did you mean 'tensor_parallel_size'?)"),
        (MINE + "model: [oops\n", "not valid YAML"),
    ],
    ids=["unknown-key", "bad-value", "unknown-serving-key", "yaml-syntax"],
)
def test_invalid_teacher_yaml_rejected(tmp_path, text, fragment):
    (tmp_path / "bad.yaml").write_text(text)
    with pytest.raises(ValueError):  # pydantic's ValidationError is a ValueError
        load_teacher("bad.yaml", tmp_path)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("name: x\nteacher: {id: bad.yaml}\nprompts:\n  train: [{source: arithmetic, count: 2}]\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    [problem] = info.value.problems
    assert problem.key == "teacher.id"
    assert fragment in problem.message
    assert "\n" not in problem.message


def test_invalid_teacher_yaml_raises_validation_error(tmp_path):
    (tmp_path / "bad.yaml").write_text(MINE + "licence_url: x\n")
    with pytest.raises(ValidationError, match="licence_url"):
        load_teacher("bad.yaml", tmp_path)


def first_column_by_table(output: str) -> dict[str, set[str]]:
    """The names in the first column of each titled rich table in `distill ls`."""
    titles = {"verifiers", "filters", "prompt sources", "teachers"}
    tables: dict[str, set[str]] = {}
    current = None
    for line in output.splitlines():
        if line.strip() in titles:
            current = line.strip()
            tables[current] = set()
        elif current and line.startswith(("│", "|")):
            cell = line[1:].split(line[0])[0].strip()
            if cell:
                tables[current].add(cell)
    return tables


def test_ls_lists_exactly_the_registries():
    env = {**os.environ, "COLUMNS": "400", "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run([sys.executable, "-m", "distill.cli", "ls"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    tables = first_column_by_table(result.stdout)
    assert tables["verifiers"] == set(VERIFIERS.names())
    assert tables["filters"] == (set(FILTERS.names()) or {"-"})
    assert tables["prompt sources"] == set(PROMPT_SOURCES.names())
    assert tables["teachers"] == set(catalog())
    assert set(VERIFIERS.names()) >= {"final-number", "math"}
    assert set(PROMPT_SOURCES.names()) >= {"jsonl", "parquet", "hf-disk", "arithmetic"}
    for entry in [*VERIFIERS, *PROMPT_SOURCES]:
        assert entry.summary and entry.summary in result.stdout
