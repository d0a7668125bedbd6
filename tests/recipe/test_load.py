import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distill.recipe import RecipeError, load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted([*(REPO / "recipes").rglob("*.yaml"), *(REPO / "recipes").rglob("*.yml")])

VALID = """\
name: test-recipe
teacher: smollm2-135m-instruct
prompts:
  train:
    - source: arithmetic
      count: 5
sampling:
  n: 2
  temperature: 0.7
"""

FIVE_MISTAKES = """\
name: five-mistakes
teacher: smollm2-135m-instrct
prompts:
  train:
    - source: jsonl
      path: data/missing.jsonl
      licence: mit
sampling:
  temprature: 0.5
  n: 0
verifiers:
  - name: final-numbr
"""


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> dict[str, str]:
    """The problems load_recipe reports, by dotted key; fails if the recipe loads."""
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    assert info.value.file == str(path)
    found = {p.key: p.message for p in info.value.problems}
    assert len(found) == len(info.value.problems), "one problem per key"
    for message in found.values():
        assert "\n" not in message, f"a problem is one line: {message!r}"
    return found


def test_five_mistakes_reported_at_once(tmp_path):
    found = problems(write(tmp_path, FIVE_MISTAKES))
    assert set(found) == {"sampling.temprature", "sampling.n", "verifiers[0].name", "prompts.train[0].path", "teacher"}
    assert "unknown key" in found["sampling.temprature"]
    assert "did you mean 'temperature'?" in found["sampling.temprature"]
    assert found["sampling.n"].startswith("0: ")
    assert "greater than or equal to 1" in found["sampling.n"]
    assert "'final-numbr'" in found["verifiers[0].name"]
    assert "did you mean 'final-number'?" in found["verifiers[0].name"]
    assert "file not found" in found["prompts.train[0].path"]
    assert "data/missing.jsonl" in found["prompts.train[0].path"]
    assert "value error" not in found["prompts.train[0].path"].lower()
    assert "did you mean 'smollm2-135m-instruct'?" in found["teacher"]


def test_validate_cli_prints_every_problem_and_exits_2(tmp_path):
    path = write(tmp_path, FIVE_MISTAKES)
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    # A narrow terminal must not wrap a problem over several lines.
    env = {**os.environ, "COLUMNS": "40", "PYTHONIOENCODING": "utf-8"}
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "validate", str(path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    problem_lines = [line for line in lines if line.startswith(f"{path}: ")]
    assert len(problem_lines) == 5, result.stderr
    for p in info.value.problems:
        assert p.render(str(path)) in lines
    assert "5 problem(s)" in result.stderr


def test_validate_cli_ok(tmp_path):
    path = write(tmp_path, VALID)
    result = subprocess.run(
        [sys.executable, "-m", "distill.cli", "validate", str(path)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "40"},
    )
    assert result.returncode == 0, result.stderr
    run_id = load_recipe(path).content_hash()[:12]
    assert f"{path}: ok (name test-recipe, run id {run_id}); licence decision: allowed" in result.stdout.splitlines()


@pytest.mark.parametrize(
    "text, key, fragments",
    [
        pytest.param(VALID.replace("n: 2", 'n: "many"'), "sampling.n", ["'many'", "valid integer"], id="wrong-type"),
        pytest.param(VALID.replace("temperature: 0.7", "temperature: -0.5"), "sampling.temperature",
                     ["-0.5", "greater than or equal to 0"], id="negative-temperature"),
        pytest.param(VALID.replace("sampling:", "sampling_params:"), "sampling_params",
                     ["unknown key", "did you mean 'sampling'?"], id="unknown-section"),
        pytest.param(VALID.replace("count: 5", "cout: 3"), "prompts.train[0].cout",
                     ["unknown key", "did you mean 'count'?"], id="unknown-component-param"),
        pytest.param(VALID + "verifiers:\n  - name: math\n    requird: false\n", "verifiers[0].requird",
                     ["unknown key", "did you mean 'required'?"], id="unknown-component-base-key"),
        pytest.param(VALID + "verifiers:\n  - name: math\n    threshold: 2\n", "verifiers[0].threshold",
                     ["2", "less than or equal to 1"], id="component-base-key-out-of-range"),
        pytest.param(VALID.replace("teacher: smollm2-135m-instruct\n", ""), "teacher",
                     ["required key is missing"], id="missing-teacher"),
        pytest.param(VALID.replace("name: test-recipe", "name: 'has spaces'"), "name",
                     ["'has spaces'", "names the run directory"], id="bad-name"),
        pytest.param(VALID.replace("    - source: arithmetic\n      count: 5\n", "    - source: jsonl\n      path: recipe.yaml\n"),
                     "prompts.train[0].licence", ["required key is missing"], id="file-source-without-licence"),
        pytest.param(VALID.replace("source: arithmetic", "source: csv"), "prompts.train[0].source",
                     ["unknown prompt source 'csv'", "registered: arithmetic, bfcl, hf-disk, jsonl, parquet, tool-tasks"], id="unknown-source"),
        pytest.param(VALID + "cluster:\n  replicas: 2\n  wait_for_replicas_s: 0\n", "cluster.wait_for_replicas_s",
                     ["0", "greater than 0"], id="zero-replica-wait"),
        pytest.param("name: x\n  teacher: [\n", "(file)", ["not valid YAML", "line 2"], id="yaml-syntax-error"),
        pytest.param("", "(top level)", ["a recipe is a mapping"], id="empty-file"),
        pytest.param("- just\n- a list\n", "(top level)", ["a recipe is a mapping"], id="not-a-mapping"),
    ],
)
def test_problem_reported_cleanly(tmp_path, text, key, fragments):
    found = problems(write(tmp_path, text))
    assert key in found, found
    for fragment in fragments:
        assert fragment in found[key]


def test_missing_file_reported_cleanly(tmp_path):
    assert problems(tmp_path / "nope.yaml") == {"(file)": "no such file"}


def test_unreadable_file_reported_cleanly(tmp_path):
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00name")
    assert problems(binary)["(file)"].startswith("cannot read")
    assert problems(tmp_path)["(file)"].startswith("cannot read")  # a directory


def test_valid_recipe_loads_with_defaults(tmp_path):
    recipe = load_recipe(write(tmp_path, VALID))
    assert recipe.name == "test-recipe"
    assert recipe.teacher.id == "smollm2-135m-instruct"
    assert (recipe.sampling.n, recipe.sampling.temperature, recipe.sampling.max_tokens) == (2, 0.7, 512)
    assert recipe.prompts.train[0].params.count == 5
    assert recipe.base_dir == tmp_path
    [source] = recipe.resolved()["prompts"]["train"]
    assert (source["source"], source["count"], source["seed"], source["licence"]) == ("arithmetic", 5, 0, "apache-2.0")


def hash_of(tmp_path: Path, text: str) -> str:
    return load_recipe(write(tmp_path, text)).content_hash()


def test_content_hash(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "q.jsonl").write_text(json.dumps({"question": "What is 2 + 3?", "answer": "5"}) + "\n")
    text = VALID.replace(
        "    - source: arithmetic\n      count: 5\n",
        "    - source: jsonl\n      path: data/q.jsonl\n      answer_field: answer\n      licence: mit\n",
    ) + "tracking:\n  wandb: offline\n"
    first = hash_of(tmp_path, text)
    assert len(first) == 64
    assert hash_of(tmp_path, text) == first, "stable across loads"
    assert hash_of(tmp_path, text.replace("temperature: 0.7", "temperature: 0.6")) != first
    assert hash_of(tmp_path, text.replace("n: 2", "n: 3")) != first
    assert hash_of(tmp_path, text.replace("wandb: offline", "wandb: disabled")) == first, "tracking does not decide outputs"
    assert hash_of(tmp_path, text + "cluster:\n  replicas: 4\n") == first, "placement does not decide outputs"
    (data / "q.jsonl").write_text(json.dumps({"question": "What is 2 + 4?", "answer": "6"}) + "\n")
    assert hash_of(tmp_path, text) != first, "the prompt file's contents decide outputs"


def test_passthrough_checked_against_vllm(tmp_path):
    pytest.importorskip("vllm")  # the check imports vLLM (~10 s); no engine is started
    bad = VALID + "  extra: {top_kk: 3, prompt_logprobs: 1, top_k: 2}\n"
    bad = bad.replace("teacher: smollm2-135m-instruct", "teacher: {id: smollm2-135m-instruct, engine_args: {enforce_eagr: true}}")
    found = problems(write(tmp_path, bad))
    assert set(found) == {"sampling.extra.top_kk", "sampling.extra.top_k", "teacher.engine_args.enforce_eagr"}
    assert "not a vLLM SamplingParams field" in found["sampling.extra.top_kk"]
    assert "did you mean 'top_k'?" in found["sampling.extra.top_kk"]
    assert "set it as sampling.top_k" in found["sampling.extra.top_k"]
    assert "did you mean 'enforce_eager'?" in found["teacher.engine_args.enforce_eagr"]

    good = VALID + "  extra: {prompt_logprobs: 1}\n"
    good = good.replace("teacher: smollm2-135m-instruct", "teacher: {id: smollm2-135m-instruct, engine_args: {enforce_eager: true}}")
    recipe = load_recipe(write(tmp_path, good, "good.yaml"))
    assert recipe.sampling.extra == {"prompt_logprobs": 1}
    assert recipe.teacher.engine_args == {"enforce_eager": True}


def test_recipes_were_found():
    assert RECIPES, f"no recipe found under {REPO / 'recipes'}"


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert recipe.name
    # House style: the header comment gives the launch command for this very file.
    assert f"distill run {path.relative_to(REPO)}" in path.read_text()


def test_on_off_yes_no_are_words_not_booleans(tmp_path):
    """A filter's `on: completion` key must reach the filter as the word "on" (YAML 1.1 reads it as True)."""
    import yaml

    from distill.recipe import RecipeLoader

    data = yaml.load("on: completion\nflag: yes\nlive: true\noff_key: off\n", Loader=RecipeLoader)
    assert data == {"on": "completion", "flag": "yes", "live": True, "off_key": "off"}


def test_lora_on_zero3_shards_is_refused():
    from pydantic import ValidationError

    from distill.recipe import Train

    with pytest.raises(ValidationError, match="LoRA with deepspeed_stage 3 is not supported"):
        Train(method="lora", deepspeed_stage=3)
    assert Train(method="lora", deepspeed_stage=2).deepspeed_stage == 2
