"""dataset -> train (real TRL on a tiny model) -> evaluate -> card -> report, with fake
sampling and evaluation backends so it runs in seconds; the real engines are covered by
tests/e2e/test_e2e_student.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from distill.pipeline import run_pipeline
from support.student import SECRET, ArithmeticBackend


def files_of(run_dir: Path) -> set[str]:
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()}


def test_the_run_directory_holds_exactly_these_files(student_run):
    run_dir = student_run["run"].dir
    files = files_of(run_dir)
    checkpoints = {f for f in files if f.startswith("train/checkpoints/")}
    wandb_files = {f for f in files if f.startswith("wandb/")}
    samples = {f for f in files if f.startswith("samples/part-")}
    student_weights = {f for f in files if f.startswith("student/") and f.endswith(".safetensors")}
    assert files - checkpoints - wandb_files - samples - student_weights == {
        ".lock", "recipe.resolved.yaml", "licence.json", "prompts/train.parquet", "prompts/eval.parquet",
        "samples/attempts.json",
        "filters/decisions.parquet", "filters/summary.json",
        "dataset/train.parquet", "dataset/manifest.json", "dataset/README.md",
        "train/summary.json",
        "student/config.json", "student/generation_config.json", "student/tokenizer.json",
        "student/tokenizer_config.json", "student/chat_template.jinja", "student/distill.json", "student/README.md",
        "eval/teacher.parquet", "eval/student.parquet", "eval/student.timing.json", "eval.json", "lineage.json",
            "report.html",
    }
    assert student_weights == {"student/model.safetensors"}
    assert samples and all(f.startswith("samples/part-") and f.endswith(".parquet") for f in samples)
    assert any(f.endswith("trainer_state.json") for f in checkpoints)  # a training can resume
    assert any(f.endswith(".wandb") for f in wandb_files)  # tracked, offline


def test_no_api_key_is_written_anywhere(student_run):
    for path in student_run["run"].dir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_training_learns_and_records_its_curve(student_run):
    t = json.loads((student_run["run"].dir / "train" / "summary.json").read_text())
    assert t["method"] == "sft" and t["weights"] == "full" and t["steps"] >= 2 and not t["resumed"]
    assert t["rows"] == 24  # 24 prompts x n=2, all right; the second of each pair is the same text, dropped
    assert len(t["log"]) == t["steps"] and all(e["loss"] > 0 for e in t["log"])
    assert t["trained_tokens"] > 0 and t["tokens_per_second"] > 0
    assert len(t["weights_sha256"]) == 64


def test_eval_compares_teacher_and_student_on_the_held_out_prompts(student_run):
    ev = json.loads((student_run["run"].dir / "eval.json").read_text())
    assert ev["held_out_prompts"] == 6 and ev["k"] == 2
    assert ev["teacher"]["pass@1"] == 0.0 and ev["teacher"]["greedy_accuracy"] == 0.0  # the wrong backend
    assert ev["student"]["pass@1"] == 1.0 and ev["student"]["greedy_accuracy"] == 1.0
    assert ev["student"]["samples"] == 12 and ev["student"]["mean_output_tokens"] == 12
    assert ev["teacher"]["cost_per_correct"] is None  # no correct answer: no cost per one
    # 12 answers x 12 tokens, priced at the parameter count (billions) per 1M tokens, over 12 right ones
    assert ev["student"]["cost_per_correct"] == pytest.approx(12 * 12 * ev["student"]["params_b"] / 1e6 / 12)
    served = student_run["served"]
    # The teacher's evaluation rode along with its sampling (one engine start): only the student
    # was served for evaluation.
    assert [m.id for m in served] == ["tiny-student"]
    assert served[0].model == str(student_run["run"].dir / "student")
    assert len(student_run["teacher"].requests) == 24 * 2 + 6 * 3
    teacher_rows = pq.read_table(student_run["run"].dir / "eval" / "teacher.parquet").to_pylist()
    assert {r["model_id"] for r in teacher_rows} == {"tiny-random"} and len(teacher_rows) == 18
    train_ids = {p for p in (student_run["run"].dir / "prompts").glob("train.parquet")}
    assert train_ids


def test_eval_requests_are_the_same_for_both_models(student_run, tiny_model, tmp_path):
    from distill.stages.evaluate import plan_eval

    run = student_run["run"]
    work = plan_eval(run.recipe, run.files.read_prompts("eval"))
    greedy = [w for w in work if w["work_id"].endswith(":greedy")]
    sampled = [w for w in work if not w["work_id"].endswith(":greedy")]
    assert len(greedy) == 6 and len(sampled) == 12
    assert all(w["sampling_params"]["temperature"] == 0.0 for w in greedy)
    assert len({w["sampling_params"]["seed"] for w in sampled}) == 12  # one seed per sample, as in training


def test_model_card_parses_and_carries_the_lineage(student_run, tiny_model):
    from huggingface_hub import ModelCard

    run_dir = student_run["run"].dir
    card = ModelCard.load(run_dir / "student" / "README.md")
    d = card.data.to_dict()
    assert d["license"] == "apache-2.0"
    assert d["base_model"] == str(tiny_model)  # the teacher entry's `model`
    assert d["base_model_relation"] == "finetune"
    assert {"distillation", "synthetic-data"} <= set(d["tags"])
    assert len(d["datasets"]) == 1 and d["datasets"][0].startswith("student-unit-sft-")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results == {"pass@1": 1.0, "greedy_accuracy": 1.0}
    assert card.data.model_name == "tiny-student"
    text = card.text
    for fact in ("tiny-random", "random-init-seed0", student_run["run"].recipe_hash,
                 "derived by the distill licence engine", "Apache License 2.0 §4",
                 "| pass@1 | 0.0% (0.0%-0.0%) | 100.0% (100.0%-100.0%) |", "95% intervals, by bootstrap",
                 "Not batch-fixed: the engine batched requests as they arrived"):
        assert fact in text, fact
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert lineage["teachers"][0]["id"] == "tiny-random"
    assert lineage["dataset"]["content_sha256"] == json.loads((run_dir / "dataset" / "manifest.json").read_text())["content_sha256"]


def test_card_is_rebuilt_from_the_run_directory_alone(student_run, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from distill.cli import app

    copy = tmp_path / "moved-run"
    shutil.copytree(student_run["run"].dir, copy, ignore=shutil.ignore_patterns("checkpoints", "wandb", "*.safetensors"))
    before = (copy / "student" / "README.md").read_text()
    (copy / "student" / "README.md").unlink()
    result = CliRunner().invoke(app, ["card", str(copy)])
    assert result.exit_code == 0, result.output
    assert (copy / "student" / "README.md").read_text() == before

    result = CliRunner().invoke(app, ["card", str(tmp_path)])
    assert result.exit_code == 2 and "not a finished distill run" in result.output


def test_report_has_every_plot(student_run):
    page = (student_run["run"].dir / "report.html").read_text()
    for title in ("Accept rate per verifier", "Completion lengths, kept vs rejected", "Training loss",
                  "Student vs teacher"):
        assert title in page
    assert page.count("<svg") == 4 and "has not run" not in page


def test_rerun_is_a_no_op_that_trains_nothing_again(student_run, tiny_model):
    run = student_run["run"]
    before = (run.dir / "student" / "model.safetensors").stat().st_mtime_ns
    old = os.getcwd()
    os.chdir(run.dir.parent.parent.parent)
    try:
        sampler, evaluator = ArithmeticBackend(), ArithmeticBackend()
        _, summaries = run_pipeline(run.recipe, backend=sampler, backend_for=lambda m: evaluator)
    finally:
        os.chdir(old)
    assert sampler.requests == [] and evaluator.requests == []
    assert (run.dir / "student" / "model.safetensors").stat().st_mtime_ns == before
    assert summaries["evaluate"]["student"]["pass@1"] == 1.0
