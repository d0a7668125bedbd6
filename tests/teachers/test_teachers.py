import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from pydantic import ValidationError

import distill.teachers as teachers
from distill.filters import FILTERS
from distill.probes import PROBES
from distill.prompts import PROMPT_SOURCES
from distill.recipe import RecipeError, load_recipe
from distill.teachers import catalog, load_teacher
from distill.verifiers import VERIFIERS

REPO = Path(__file__).resolve().parents[2]

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
    monkeypatch.setattr(teachers, "SHIPPED", tmp_path)
    with pytest.raises(ValueError, match="id 'my-teacher' must match the file name"):
        load_teacher("renamed")


def test_shipped_entries_are_the_repositorys_teachers_folder(monkeypatch):
    if not teachers.SHIPPED.is_symlink():
        pytest.skip("installed from a wheel: the entries are package data, not a link")
    monkeypatch.delenv("DISTILL_TEACHERS", raising=False)
    assert teachers.SHIPPED.resolve() == REPO / "teachers"
    assert sorted(catalog().values()) == sorted(teachers.SHIPPED / p.name for p in (REPO / "teachers").glob("*.yaml"))


# -- $DISTILL_TEACHERS: the user's own directories of entries, after the shipped ones


def user_dir(tmp_path: Path, name: str, **entries: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    for file, text in entries.items():
        (d / file).write_text(text)
    return d


def test_user_entries_are_found_by_id(tmp_path, monkeypatch):
    d = user_dir(tmp_path, "ours", **{"my-teacher.yaml": MINE})
    monkeypatch.setenv("DISTILL_TEACHERS", str(d))
    assert catalog()["my-teacher"] == d / "my-teacher.yaml"
    assert REQUIRED <= set(catalog())  # the shipped ones stay
    assert load_teacher("my-teacher").serving.tensor_parallel_size == 2
    assert teachers.origin(catalog()["my-teacher"]) == str(d)
    assert teachers.origin(catalog()["deepseek-r1"]) == "shipped"


def test_several_user_directories_are_searched_in_order(tmp_path, monkeypatch):
    a = user_dir(tmp_path, "a", **{"my-teacher.yaml": MINE})
    b = user_dir(tmp_path, "b", **{"other.yml": MINE.replace("my-teacher", "other")})
    monkeypatch.setenv("DISTILL_TEACHERS", os.pathsep.join([str(a), "", str(b)]))
    assert [p.parent for p in catalog().values()][-2:] == [a, b]
    assert load_teacher("other").id == "other"


def test_user_entry_id_must_match_file_name(tmp_path, monkeypatch):
    d = user_dir(tmp_path, "ours", **{"renamed.yaml": MINE})
    monkeypatch.setenv("DISTILL_TEACHERS", str(d))
    with pytest.raises(ValueError, match=r"renamed.yaml: id 'my-teacher' must match the file name"):
        load_teacher("renamed")


def test_user_entry_may_not_reuse_a_shipped_id(tmp_path, monkeypatch):
    shipped = catalog()["deepseek-r1"]
    d = user_dir(tmp_path, "ours", **{"deepseek-r1.yaml": shipped.read_text()})
    monkeypatch.setenv("DISTILL_TEACHERS", str(d))
    with pytest.raises(ValueError) as info:
        load_teacher("smollm2-135m-instruct")  # any lookup: the catalogue itself is ambiguous
    message = str(info.value)
    assert "teacher id 'deepseek-r1' is defined twice" in message
    assert str(shipped) in message and str(d / "deepseek-r1.yaml") in message


def test_two_user_directories_may_not_share_an_id(tmp_path, monkeypatch):
    a = user_dir(tmp_path, "a", **{"my-teacher.yaml": MINE})
    b = user_dir(tmp_path, "b", **{"my-teacher.yml": MINE})
    monkeypatch.setenv("DISTILL_TEACHERS", os.pathsep.join([str(a), str(b)]))
    with pytest.raises(ValueError, match="defined twice") as info:
        catalog()
    assert str(a / "my-teacher.yaml") in str(info.value) and str(b / "my-teacher.yml") in str(info.value)


def test_user_directory_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_TEACHERS", str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="DISTILL_TEACHERS: .*nowhere is not a directory"):
        catalog()


def test_unknown_id_names_the_environment_variable():
    with pytest.raises(ValueError, match="add its directory to DISTILL_TEACHERS"):
        load_teacher("zzz")


def ls(env: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "400", "PYTHONIOENCODING": "utf-8", **env}
    return subprocess.run([sys.executable, "-m", "distill.cli", "ls"], capture_output=True, text=True, env=env, timeout=120)


def test_ls_lists_user_entries_with_where_they_come_from(tmp_path):
    d = user_dir(tmp_path, "ours", **{"my-teacher.yaml": MINE, "broken.yaml": MINE.replace("my-teacher", "broken") + "oops: 1\n"})
    result = ls({"DISTILL_TEACHERS": str(d)})
    assert result.returncode == 0, result.stderr
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert str(d) in rows["my-teacher"] and "/models/my-teacher" in rows["my-teacher"]
    assert "invalid" in rows["broken"] and "oops" in rows["broken"]  # listed with its problem, not a crash
    assert rows["deepseek-r1"].rstrip("│ ").endswith("shipped")


def test_ls_refuses_an_id_clash(tmp_path):
    d = user_dir(tmp_path, "ours", **{"deepseek-r1.yaml": MINE.replace("my-teacher", "deepseek-r1")})
    result = ls({"DISTILL_TEACHERS": str(d)})
    assert result.returncode == 2
    assert "teacher id 'deepseek-r1' is defined twice" in result.stderr and str(d / "deepseek-r1.yaml") in result.stderr


# -- packaging: the top-level teachers/ folder travels in the wheel as distill/teachers/shipped/


def test_the_wheel_holds_every_shipped_entry(tmp_path):
    if not (REPO / "pyproject.toml").is_file():
        pytest.skip("not a source checkout")
    src = tmp_path / "src"
    # A copy, so the build leaves nothing in the checkout; symlinks stay links, as git checks them out.
    shutil.copytree(REPO / "distill", src / "distill", symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "teachers", src / "teachers")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheel"), str(src)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    [wheel] = (tmp_path / "wheel").glob("distill-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    entries = {n for n in names if n.endswith((".yaml", ".yml")) and "/teachers/" in f"/{n}"}
    assert entries == {f"distill/teachers/shipped/{p.name}" for p in (REPO / "teachers").glob("*.yaml")}
    assert REQUIRED <= {Path(n).stem for n in entries}


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


from distill.backends import BACKENDS  # noqa: E402


def first_column_by_table(output: str) -> dict[str, set[str]]:
    """The names in the first column of each titled rich table in `distill ls`."""
    titles = {"verifiers", "filters", "prompt sources", "probes", "backends", "teachers"}
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
    assert tables["probes"] == set(PROBES.names()) >= {"ifbench", "harmbench", "over-refusal", "bias", "humaneval"}
    assert tables["backends"] == set(BACKENDS.names()) >= {"vllm-ray", "openai-http"}
    assert tables["teachers"] == set(catalog())
    assert set(VERIFIERS.names()) >= {"final-number", "math"}
    assert set(PROMPT_SOURCES.names()) >= {"jsonl", "parquet", "hf-disk", "arithmetic"}
    for entry in [*VERIFIERS, *PROMPT_SOURCES]:
        assert entry.summary and entry.summary in result.stdout
