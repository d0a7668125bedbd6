"""The lineage store over two finished runs that share a teacher (fake sampling, a tiny real
training, as in tests/stages/test_student.py): what derives from what, a model's ancestry,
idempotent registration, rendering and the `distill lineage` command."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import typer
import yaml
from rich.console import Console
from sqlalchemy import func, select

from distill.lineage_store import (
    ENV_URL, ancestry, artifacts, descendants, edges, lineage_command, open_store, register_run, render_table, to_json,
)
from distill.pipeline import run_pipeline
from distill.recipe import load_recipe
from support.student import ArithmeticBackend, student_recipe

BOTH = {"tiny-student", "tiny-student-b"}


@pytest.fixture(scope="module")
def second(tiny_model, tmp_path_factory):
    """Another recipe with the same teacher: fewer prompts, so other data and another student."""
    tmp = tmp_path_factory.mktemp("second")
    path = student_recipe(tmp, tiny_model)
    data = yaml.safe_load(path.read_text())
    data["name"], data["student"]["name"] = "student-unit-b", "tiny-student-b"
    data["prompts"]["train"][0]["count"] = 16
    path.write_text(yaml.safe_dump(data))
    old = os.getcwd()
    os.chdir(tmp)
    try:
        run, _ = run_pipeline(load_recipe(path), backend=ArithmeticBackend(), backend_for=lambda m: ArithmeticBackend())
    finally:
        os.chdir(old)
    return run


@pytest.fixture(scope="module")
def ctx(student_run, second, tiny_model, tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'lineage.sqlite'}"  # an explicit URL, not the default
    store = open_store(url)
    first = student_run["run"]
    for run in (first, second):
        register_run(store, run.dir)

    def facts(run):
        lin = json.loads((run.dir / "lineage.json").read_text())
        return {"run": run, "dataset": lin["dataset"]["name"], "sha": lin["dataset"]["content_sha256"],
                "weights": lin["model"]["revision"], "samples": f"{run.recipe.name}-samples-{run.id}"}

    return {"store": store, "url": url, "a": facts(first), "b": facts(second), "tiny_model": tiny_model}


def names(rows, kind):
    return {r["name"] for r in rows if r["kind"] == kind}


def counts(store):
    with store.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in (artifacts, edges)}


def test_descendants_of_the_shared_teacher_include_both_datasets_and_models(ctx):
    rows = descendants(ctx["store"], "teacher", "tiny-random")
    assert [(r["kind"], r["name"], r["depth"]) for r in rows[:1]] == [("teacher", "tiny-random", 0)]
    assert names(rows, "dataset") == {ctx["a"]["dataset"], ctx["b"]["dataset"]}
    assert names(rows, "model") == BOTH
    assert names(rows, "samples") == {ctx["a"]["samples"], ctx["b"]["samples"]}
    model = next(r for r in rows if r["name"] == "tiny-student-b")
    assert model["path"] == ["tiny-random", ctx["b"]["samples"], ctx["b"]["dataset"], "tiny-student-b"]
    assert (model["relation"], model["via"], model["licence"]) == ("trained-on", ctx["b"]["dataset"], "apache-2.0")


# (kind, key from the context, the student models that must derive from it): every obvious key, any case
KEYS = [
    ("teacher", lambda c: "tiny-random", BOTH),
    ("teacher", lambda c: "TINY-Random", BOTH),
    ("teacher", lambda c: str(c["tiny_model"]), BOTH),  # by the teacher's model, not its id
    ("licence", lambda c: "apache-2.0", BOTH),
    ("licence", lambda c: "Apache-2.0", BOTH),
    ("license", lambda c: "apache-2.0", BOTH),
    ("prompt_source", lambda c: "arithmetic", BOTH),
    ("base_model", lambda c: "tiny-random", BOTH),
    ("dataset", lambda c: c["a"]["sha"], {"tiny-student"}),
    ("dataset", lambda c: c["b"]["sha"][:10].upper(), {"tiny-student-b"}),  # a hash prefix
    ("dataset", lambda c: c["a"]["dataset"], {"tiny-student"}),
    ("run", lambda c: c["b"]["run"].recipe_hash, {"tiny-student-b"}),
]


@pytest.mark.parametrize("kind,key,models", KEYS)
def test_descendants_match_by_every_obvious_key(ctx, kind, key, models):
    rows = descendants(ctx["store"], kind, key(ctx))
    assert rows and rows.hint is None
    assert names(rows, "model") == models


def test_ancestry_of_a_student_names_every_source_with_its_relation(ctx):
    a = ctx["a"]
    expected = {
        ("model", "tiny-student", None),
        ("dataset", a["dataset"], "trained-on"),
        ("base_model", "tiny-random", "fine-tuned-from"),
        ("licence", "apache-2.0", "licensed-under"),
        ("run", "student-unit", "produced-by"),
        ("samples", a["samples"], "built-from"),
        ("teacher", "tiny-random", "sampled-from"),
        ("prompt_source", "arithmetic", "evaluated-on"),  # the held-out prompts: the nearest relation
    }
    rows = ancestry(ctx["store"], "tiny-student")
    assert {(r["kind"], r["name"], r["relation"]) for r in rows} == expected
    # The same generator gave the training prompts too: that relation is kept beside it.
    assert next(r for r in rows if r["kind"] == "prompt_source")["also"] == ["prompts-from"]
    assert all(r["also"] == [] for r in rows if r["kind"] != "prompt_source")
    assert {r["kind"]: r["depth"] for r in rows}["teacher"] == 3  # model <- dataset <- samples <- teacher
    by_hash = ancestry(ctx["store"], a["weights"][:12])
    assert [r["id"] for r in by_hash] == [r["id"] for r in rows]


def test_registering_twice_changes_nothing(ctx):
    store = ctx["store"]
    before = counts(store)
    with store.connect() as conn:
        created = dict(conn.execute(select(artifacts.c.id, artifacts.c.created_at)).all())
    assert register_run(store, ctx["a"]["run"].dir) == {"artifacts": 0, "edges": 0}
    assert counts(store) == before
    with store.connect() as conn:
        assert dict(conn.execute(select(artifacts.c.id, artifacts.c.created_at)).all()) == created
    # per run: run, samples, dataset, model; shared, one artifact each: teacher, base model, prompt source, licence
    assert before["artifacts"] == 2 * 4 + 4
    kinds = [r["kind"] for r in descendants(store, "licence", "apache-2.0")]
    assert kinds.count("teacher") == 1 and kinds.count("prompt_source") == 1 and kinds.count("base_model") == 1


def test_without_on_conflict_registration_is_idempotent_too(ctx, tmp_path, monkeypatch):
    from distill.lineage_store import tables

    monkeypatch.setattr(tables, "_INSERTS", {})  # as on a database other than SQLite or PostgreSQL
    store = open_store(f"sqlite:///{tmp_path / 'l.sqlite'}")
    first = register_run(store, ctx["a"]["run"].dir)
    assert first["artifacts"] == 8 and register_run(store, ctx["a"]["run"].dir) == {"artifacts": 0, "edges": 0}
    assert counts(store) == first


def test_a_run_that_got_further_adds_only_its_new_artifacts(ctx, tmp_path):
    source = ctx["a"]["run"].dir
    partial = tmp_path / "copied-after-dataset"  # the same run, stopped after the dataset stage
    shutil.copytree(source, partial, ignore=shutil.ignore_patterns(
        "train", "student", "eval", "eval.json", "lineage.json", "report.html", "wandb"))
    store = open_store(f"sqlite:///{tmp_path / 'l.sqlite'}")
    assert register_run(store, partial)["artifacts"] == 6  # run, samples, teacher, prompt source, licence, dataset
    assert ancestry(store, "tiny-student") == []
    assert names(descendants(store, "teacher", "tiny-random"), "dataset") == {ctx["a"]["dataset"]}

    added = register_run(store, source)
    assert added["artifacts"] == 2  # the base model and the student
    assert names(descendants(store, "teacher", "tiny-random"), "model") == {"tiny-student"}
    run = next(r for r in ancestry(store, "tiny-student") if r["kind"] == "run")
    assert run["attrs"]["path"] == str(source)  # attributes follow the latest registration


def test_stages_not_run_are_skipped_and_a_non_run_is_refused(ctx, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(ctx["a"]["run"].dir / "recipe.resolved.yaml", fresh)  # opened, nothing sampled yet
    store = open_store(f"sqlite:///{tmp_path / 'l.sqlite'}")
    assert register_run(store, fresh) == {"artifacts": 1, "edges": 0}
    with pytest.raises(FileNotFoundError, match="not a distill run directory"):
        register_run(store, tmp_path)


# (kind, unknown key, what the hint must say)
UNKNOWN = [
    ("teacher", "tiny-randon", "did you mean tiny-random?"),
    ("model", "tiny-student-c", "did you mean tiny-student"),
    ("model", "tiny-random", "it is known there as a base_model and a teacher"),
    ("dataset", "0000000000000000", "known: student-unit-b-sft-"),
    ("licence", "llama3.1", "known: apache-2.0"),
]


@pytest.mark.parametrize("kind,key,hint", UNKNOWN)
def test_an_unknown_key_gives_an_empty_result_with_a_hint(ctx, kind, key, hint):
    rows = ancestry(ctx["store"], key) if kind == "model" else descendants(ctx["store"], kind, key)
    assert rows == [] and hint in rows.hint and repr(key) in rows.hint and ctx["url"] in rows.hint


def test_an_empty_store_says_how_runs_get_there(tmp_path):
    rows = descendants(open_store(f"sqlite:///{tmp_path / 'empty.sqlite'}"), "teacher", "tiny-random")
    assert rows == [] and "holds no teacher yet" in rows.hint
    with pytest.raises(ValueError, match="unknown artifact kind 'teachers'"):
        descendants(open_store(f"sqlite:///{tmp_path / 'empty.sqlite'}"), "teachers", "x")


def test_rows_render_as_a_table_and_as_json(ctx):
    rows = descendants(ctx["store"], "teacher", "tiny-random")
    console = Console(record=True, width=240)
    console.print(render_table(rows, title="what derives from teacher tiny-random"))
    text = console.export_text()
    for fact in ("tiny-student-b", ctx["a"]["dataset"], "trained-on", "sampled-from", ctx["a"]["weights"][:12]):
        assert fact in text, fact
    assert ctx["a"]["weights"] not in text  # hashes are shortened in the table...
    parsed = json.loads(to_json(rows))
    assert [r["id"] for r in parsed] == [r["id"] for r in rows]
    assert ctx["a"]["weights"] in {r["version"] for r in parsed}  # ...and whole in JSON


def test_the_default_store_is_a_file_in_the_runs_dir_unless_the_env_names_one(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV_URL, raising=False)
    open_store(None, tmp_path / "runs")
    assert (tmp_path / "runs" / "lineage.sqlite").is_file()
    monkeypatch.setenv(ENV_URL, f"sqlite:///{tmp_path / 'team' / 'shared.sqlite'}")
    open_store(None, tmp_path / "other-runs")
    assert (tmp_path / "team" / "shared.sqlite").is_file() and not (tmp_path / "other-runs").exists()


@pytest.mark.parametrize("asked", [{}, {"teacher": "tiny-random", "model": "tiny-student"}])
def test_the_command_wants_exactly_one_question(ctx, asked, capsys):
    with pytest.raises(typer.Exit) as e:
        lineage_command(**asked, store_url=ctx["url"])
    assert e.value.exit_code == 2
    assert "exactly one of --teacher, --dataset, --licence, --model" in capsys.readouterr().err


def test_the_command_prints_a_table_json_or_a_hint(ctx, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "240")  # rich folds cells to fit the terminal; the captured one has none
    lineage_command(model="tiny-student-b", store_url=ctx["url"])
    out = capsys.readouterr().out
    assert "ancestry of model tiny-student-b" in out and "fine-tuned-from" in out

    lineage_command(licence="apache-2.0", json_out=True, store_url=ctx["url"])
    assert names(json.loads(capsys.readouterr().out), "model") == BOTH

    with pytest.raises(typer.Exit) as e:
        lineage_command(teacher="tiny-randon", store_url=ctx["url"])
    assert e.value.exit_code == 1 and "did you mean tiny-random?" in capsys.readouterr().err
