"""Plug-ins: out-of-tree verifiers, filters, prompt sources and backends, by entry point and by
dotted name, through validation and the pipeline. The example package is the one in
docs/extending.md, installed from that page into a throwaway site directory."""

from __future__ import annotations

import importlib
import re
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import yaml

import distill.ray_runtime
from distill.backends import BACKENDS, Backend, BackendOptions, backend_name
from distill.filters import FILTERS
from distill.pipeline import make_backend, run_pipeline
from distill.prompts import PROMPT_SOURCES
from distill.recipe import RecipeError, load_recipe
from distill.registry import PluginError
from distill.run import open_run
from distill.stages.verify import verify_batch
from distill.teachers import Teacher
from distill.verifiers import VERIFIERS, VerifyContext

DOCS = Path(__file__).parents[1] / "docs" / "extending.md"
REGISTRIES = (VERIFIERS, FILTERS, PROMPT_SOURCES, BACKENDS)
# {"a": 1} is echoed back and matches; the arithmetic is echoed as a question, not JSON; the
# password row matches too, and the banned-words filter drops it.
QUESTIONS = [('{"a": 1}', '{"a": 1}'), ("What is 2 + 2?", "4"), ('{"password": "x"}', '{"password": "x"}')]


def doc_blocks() -> dict[str, str]:
    """The code blocks of docs/extending.md that start with a `# path` line, by that path."""
    blocks = re.findall(r"```(?:python|toml|yaml)\n# (\S+)\n(.*?)```", DOCS.read_text(), re.S)
    return {path: body for path, body in blocks}


@pytest.fixture(autouse=True)
def fresh_registries():
    """Each test sees only the plug-ins it installs: registries and plug-in modules are forgotten."""

    def forget():
        for registry in REGISTRIES:
            registry.reset_plugins()
        for name in [m for m in sys.modules if m.startswith("acme_")]:
            del sys.modules[name]
        importlib.invalidate_caches()

    forget()
    yield
    forget()


def install(site: Path, monkeypatch, dist: str, entry_point_groups: dict[str, dict[str, str]],
            files: dict[str, str]) -> None:
    """A distribution as pip would leave it: its modules and a *.dist-info with METADATA and
    entry_points.txt, in a site directory on sys.path."""
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {value}\n" for name, value in eps.items()) + "\n"
        for group, eps in entry_point_groups.items()))
    monkeypatch.syspath_prepend(str(site))  # also invalidates the import caches


def pyproject_entry_points(text: str) -> tuple[str, dict[str, dict[str, str]]]:
    """The project name and the entry-point tables of a pyproject.toml (the subset the docs use;
    tomllib is not in Python 3.10)."""
    name = re.search(r'^name = "([^"]+)"', text, re.M).group(1)
    groups = {}
    for group, body in re.findall(r'^\[project\.entry-points\."([^"]+)"\]\n(.*?)(?=^\[|\Z)', text, re.M | re.S):
        groups[group] = dict(re.findall(r'^([\w.-]+) = "([^"]+)"', body, re.M))
    return name, groups


def install_docs_package(tmp_path: Path, monkeypatch, entry_points_too: bool = True) -> None:
    blocks = doc_blocks()
    dist, groups = pyproject_entry_points(blocks["pyproject.toml"])
    assert len(groups) == 4, groups  # one group per kind
    files = {path: body for path, body in blocks.items() if path.startswith("acme_distill/")}
    install(tmp_path / "site", monkeypatch, dist, groups if entry_points_too else {},
            {"acme_distill/__init__.py": "", **files})


def docs_recipe(tmp_path: Path, by_dotted_name: bool = False) -> Path:
    """The recipe and teacher entry of docs/extending.md, with their names swapped for the dotted
    names the comments give when by_dotted_name."""
    blocks = doc_blocks()
    recipe_text, teacher_text = blocks["recipe.yaml"], blocks["teachers/echo.yaml"]
    if by_dotted_name:  # the "# or package.module:attribute" comments name each component's dotted form
        recipe_text = re.sub(r"(source|name): [\w-]+ +# or (\S+)", r"\1: \2", recipe_text)
        teacher_text = re.sub(r"backend: \w+ +# or the dotted name (\S+)", r"backend: \1", teacher_text)
    folder = tmp_path / "recipe"
    (folder / "teachers").mkdir(parents=True)
    (folder / "data").mkdir()
    (folder / "teachers" / "echo.yaml").write_text(teacher_text)
    (folder / "recipe.yaml").write_text(recipe_text)
    import csv

    with (folder / "data" / "questions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["question", "answer"])
        writer.writerows(QUESTIONS)
    return folder / "recipe.yaml"


def no_ray(monkeypatch) -> list:
    """Ray is not started for real; returns the calls made to start it."""
    calls: list = []
    monkeypatch.setattr(distill.ray_runtime, "start_ray", lambda *a, **k: calls.append((a, k)))
    return calls


def problems(path: Path) -> dict[str, str]:
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    return {p.key: p.message for p in e.value.problems}


@pytest.mark.parametrize("by_dotted_name", [False, True], ids=["entry-points", "dotted-names"])
def test_the_docs_plugins_sample_verify_and_filter_a_recipe(tmp_path, monkeypatch, by_dotted_name):
    install_docs_package(tmp_path, monkeypatch, entry_points_too=not by_dotted_name)
    if not by_dotted_name:
        assert "exact-json" in {ep.name for ep in entry_points(group="distill.verifiers")}  # importlib sees it
    path = docs_recipe(tmp_path, by_dotted_name)
    if by_dotted_name:
        assert "acme_distill.verifiers:exact_json" in path.read_text()
    monkeypatch.chdir(tmp_path)
    no_ray(monkeypatch)
    recipe = load_recipe(path)
    assert recipe.teacher_entry.backend == ("acme_distill.backends:EchoBackend" if by_dotted_name else "echo")
    # No backend= : the teacher entry's backend is looked up in the registry.
    run, summaries = run_pipeline(recipe, until="filter")
    rows = {r["prompt_text"]: r for r in run.files.read_samples().to_pylist()}
    assert set(rows) == {q for q, _ in QUESTIONS}
    assert all(r["backend"] == "echo" and r["prompt_source"] == f"{recipe.prompts.train[0].source}:data/questions.csv"
               for r in rows.values())
    assert [v["score"] for v in rows['{"a": 1}']["verdicts"]] == [1.0], rows['{"a": 1}']["verdicts"]
    assert rows["What is 2 + 2?"]["verdicts"][0]["reason"].startswith("not JSON")
    assert summaries["sample"].accepted == 2
    [banned] = summaries["filter"]["filters"]
    assert (banned["seen"], banned["dropped"]) == (2, 1)
    assert summaries["filter"]["kept"] == 1


def test_the_docs_plugins_are_listed_and_documented(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from distill.cli import app

    install_docs_package(tmp_path, monkeypatch)
    assert {"exact-json", "banned-words", "csv", "echo"} <= set(VERIFIERS.names() + FILTERS.names()
                                                                + PROMPT_SOURCES.names() + BACKENDS.names())
    entry = VERIFIERS.get("exact-json")
    assert entry.summary == "The completion, parsed as JSON, equals the reference's JSON."
    assert entry.params.__name__ == "ExactJsonParams" and "keys: [name, arguments]" in entry.example
    echo = BACKENDS.get("echo").fn(Teacher(id="t", model="m", revision="r", licence="mit", params_b=1), BackendOptions())
    assert isinstance(echo, Backend)
    out = CliRunner().invoke(app, ["ls"], terminal_width=250)
    assert out.exit_code == 0 and "exact-json" in out.stdout and "banned-words" in out.stdout
    out = CliRunner().invoke(app, ["ls", "exact-json"], terminal_width=250)
    assert out.exit_code == 0 and "keys" in out.stdout


def test_a_dotted_name_verifier_runs_in_the_verify_step(tmp_path, monkeypatch):
    install_docs_package(tmp_path, monkeypatch, entry_points_too=False)
    path = docs_recipe(tmp_path, by_dotted_name=True)
    path.write_text(path.read_text().replace("name: acme_distill.verifiers:exact_json",
                                             "name: acme_distill.verifiers:exact_json\n    keys: [a]"))
    recipe = load_recipe(path)
    [spec] = recipe.verifiers
    assert spec.params.keys == ["a"]
    verdicts = verify_batch(recipe.verifiers, ['{"a": 1, "b": 2}', "nope", None], ['{"a": 1}', '{"a": 1}', '{"a": 1}'])
    assert [[v["score"] for v in row] for row in verdicts] == [[1.0], [0.0], []]
    assert "acme_distill.verifiers:exact_json" not in VERIFIERS.names()  # dotted names are looked up, not listed


def test_a_decorator_registered_plugin_resolves_to_its_registration(tmp_path, monkeypatch):
    module = '''
from distill.registry import Params
from distill.verifiers import VERIFIERS, Verdict


class YesParams(Params):
    word: str = "yes"


@VERIFIERS.register("says-yes", params=YesParams, example="verifiers:\\n  - name: says-yes\\n")
def says_yes(completions, references, params, ctx):
    """The completion is the word."""
    return [Verdict(float(c == params.word)) for c in completions]
'''
    install(tmp_path / "site", monkeypatch, "acme-yes", {"distill.verifiers": {"says-yes": "acme_yes.checks"}},
            {"acme_yes/__init__.py": "", "acme_yes/checks.py": module})
    by_entry_point = VERIFIERS.get("says-yes")  # an entry point naming a module: importing it registers the name
    assert by_entry_point.params.__name__ == "YesParams" and "entry point 'says-yes'" in by_entry_point.origin
    assert VERIFIERS.get("acme_yes.checks:says_yes") is by_entry_point
    [v] = by_entry_point.fn(["yes"], [None], by_entry_point.params(), VerifyContext.blank(1))
    assert v.score == 1.0


def test_a_plugin_backend_gets_the_runs_settings(tmp_path, monkeypatch):
    module = '''
made = []


def make_recorder(model, options):
    """Remembers what it was made with."""
    made.append((model, options))
    return "a backend"
'''
    install(tmp_path / "site", monkeypatch, "acme-record", {}, {"acme_record.py": module})
    (tmp_path / "recorder.yaml").write_text(yaml.safe_dump({
        "id": "recorder", "model": "none", "revision": "1", "licence": "apache-2.0", "params_b": 1,
        "backend": "acme_record:make_recorder"}))
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "r", "teacher": "recorder.yaml",
        "prompts": {"train": [{"source": "arithmetic", "count": 2}]}, "sampling": {"seed": 11, "batch_size": 5},
        "cluster": {"replicas": 3, "address": "ray://head:10001"}, "tracking": {"wandb": "disabled"}}))
    monkeypatch.chdir(tmp_path)
    calls = no_ray(monkeypatch)
    recipe = load_recipe(path)
    assert make_backend(open_run(recipe), verbose=True) == "a backend"
    import acme_record

    [(model, options)] = acme_record.made
    assert model.id == "recorder" and isinstance(options, BackendOptions)
    assert (options.engine_args, options.seed, options.batch_size, options.replicas, options.ray_address,
            options.model_source, options.quiet) == ({}, 11, 5, 3, "ray://head:10001", None, False)
    assert calls == []  # only a backend that needs Ray starts it


@pytest.mark.parametrize("entry, expected", [
    ({}, "vllm-ray"),
    ({"endpoint": {"base_url": "http://127.0.0.1:9/v1"}}, "openai-http"),
    ({"backend": "echo"}, "echo"),
])
def test_the_default_backend_follows_the_entry(entry, expected):
    teacher = Teacher(id="t", model="m", revision="r", licence="apache-2.0", params_b=1, **entry)
    assert backend_name(teacher) == expected


def test_the_builtin_backends_are_registered():
    from distill.backends.openai_http import make_http_backend
    from distill.backends.vllm_ray import make_vllm_backend

    assert BACKENDS.get("openai-http").fn is make_http_backend and BACKENDS.get("vllm-ray").fn is make_vllm_backend


def test_unknown_names_are_recipe_problems_with_the_closest_name(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from distill.cli import app

    install_docs_package(tmp_path, monkeypatch)
    path = docs_recipe(tmp_path)
    path.write_text(path.read_text().replace("name: exact-json", "name: exact-jsn")
                    .replace("name: banned-words", "name: acme_distill.filters:banned_wrds"))
    teacher = path.parent / "teachers" / "echo.yaml"
    teacher.write_text(teacher.read_text().replace("backend: echo", "backend: ech"))
    found = problems(path)
    assert "unknown verifier 'exact-jsn' (did you mean 'exact-json'?)" in found["verifiers[0].name"]
    assert "has no attribute 'banned_wrds' (did you mean 'banned_words'?)" in found["filters[0].name"]
    assert "backend: unknown backend 'ech' (did you mean 'echo'?)" in found["teacher"]
    out = CliRunner().invoke(app, ["validate", str(path)])
    assert out.exit_code == 2 and "did you mean 'echo'?" in out.output


def test_an_unimportable_dotted_name_says_what_was_tried(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "teacher": "smollm2-135m-instruct",
                                    "prompts": {"train": [{"source": "arithmetic", "count": 2}]},
                                    "verifiers": [{"name": "acme_absent.checks:exact"}]}))
    message = problems(path)["verifiers[0].name"]
    assert "cannot import module 'acme_absent.checks'" in message and "No module named 'acme_absent'" in message


def test_a_broken_entry_point_is_a_clear_problem_not_an_import_error(tmp_path, monkeypatch):
    install(tmp_path / "site", monkeypatch, "acme-broken",
            {"distill.verifiers": {"broken": "acme_broken.checks:check"}},
            {"acme_broken/__init__.py": "", "acme_broken/checks.py": "raise RuntimeError('set ACME_KEY first')\n"})
    assert "broken" in VERIFIERS.names() and "acme_broken.checks" not in sys.modules  # listed, not imported
    assert "broken" not in VERIFIERS and "final-number" in VERIFIERS
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"name": "r", "teacher": "smollm2-135m-instruct",
                                    "prompts": {"train": [{"source": "arithmetic", "count": 2}]},
                                    "verifiers": [{"name": "broken"}]}))
    message = problems(path)["verifiers[0].name"]
    assert "entry point 'broken' (acme_broken.checks:check) of distribution acme-broken 0.1.0" in message
    assert "RuntimeError: set ACME_KEY first" in message
    with pytest.raises(KeyError, match="set ACME_KEY first"):
        VERIFIERS.get("broken")
    listed = {e.name: e for e in VERIFIERS}
    assert "cannot be used" in listed["broken"].summary
    with pytest.raises(PluginError, match="set ACME_KEY first"):
        listed["broken"].fn([], [], None, None)


def test_a_plugin_must_satisfy_its_kind(tmp_path, monkeypatch):
    module = '''
def no_licence(params):
    """Prompts with no licence to carry."""
    return []


class NotParams:
    pass


def loose(completions, references, params, ctx):
    """Takes keys no schema checks."""
    return []


loose.params = NotParams
'''
    install(tmp_path / "site", monkeypatch, "acme-bad", {}, {"acme_bad.py": module})
    assert "acme_bad:no_licence" not in PROMPT_SOURCES
    assert "its params need a `licence` field" in PROMPT_SOURCES.unknown("acme_bad:no_licence")
    assert "acme_bad:loose" not in VERIFIERS
    assert "must be a subclass of distill.registry.Params" in VERIFIERS.unknown("acme_bad:loose")


def test_two_distributions_claiming_one_name_are_refused(tmp_path, monkeypatch):
    files = {"acme_one.py": "def check(c, r, p, x):\n    '''One.'''\n    return []\n"}
    install(tmp_path / "site", monkeypatch, "acme-one", {"distill.verifiers": {"same": "acme_one:check"}}, files)
    install(tmp_path / "site", monkeypatch, "acme-two", {"distill.verifiers": {"same": "acme_one:check"}}, {})
    assert "same" not in VERIFIERS
    message = VERIFIERS.unknown("same")
    assert "claimed by two plug-ins" in message and "acme-one" in message and "acme-two" in message
