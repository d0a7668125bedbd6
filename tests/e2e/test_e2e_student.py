"""End to end on CPU with the real parts: `distill run` samples a tiny teacher with vLLM on a
local Ray cluster, trains the student with TRL, serves the student with vLLM to evaluate it
against the teacher, writes the card and the report, all from one command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from support.models import write_tiny_teacher

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tiny_model, tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e-student")
    write_tiny_teacher(work / "tiny.yaml", tiny_model)
    (work / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "e2e-student",
        "teacher": {"id": "tiny.yaml", "engine_args": {"gpu_memory_utilization": 0.1}},
        "prompts": {"train": [{"source": "arithmetic", "count": 16, "seed": 3}],
                    "eval": [{"source": "arithmetic", "count": 5, "seed": 4}]},
        "sampling": {"n": 2, "temperature": 1.0, "max_tokens": 24, "seed": 5},
        # A random tiny teacher is never right: the verdict is recorded but not required,
        # so every sample is kept and the student has something to train on.
        "verifiers": [{"name": "final-number", "required": False}],
        "student": {"name": "tiny-student", "base": "tiny.yaml"},
        # A large step so that a few steps visibly move a random model.
        "train": {"epochs": 1, "batch_size": 4, "max_length": 128, "save_steps": 2, "learning_rate": 0.01},
        "eval": {"k": 2},
        "tracking": {"wandb": "offline"},
    }))
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", "recipe.yaml"], cwd=work,
                          capture_output=True, text=True, timeout=900)
    run_dir = next((work / "runs" / "e2e-student").iterdir())
    return {"proc": proc, "run_dir": run_dir}


def test_one_command_runs_every_stage(finished):
    proc, run_dir = finished["proc"], finished["run_dir"]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for path in ("samples", "dataset/train.parquet", "train/summary.json", "student/model.safetensors",
                 "student/README.md", "eval/teacher.parquet", "eval/student.parquet", "eval.json", "lineage.json",
                 "report.html", "wandb"):
        assert (run_dir / path).exists(), path
    for words in ("student vs teacher on 5 held-out prompts", "train: sft, full weights", "card:", "report:"):
        assert words in proc.stdout, words


def test_the_student_was_served_by_vllm_from_its_own_weights(finished):
    import pyarrow.parquet as pq

    run_dir = finished["run_dir"]
    student = pq.read_table(run_dir / "eval" / "student.parquet").to_pylist()
    teacher = pq.read_table(run_dir / "eval" / "teacher.parquet").to_pylist()
    assert len(student) == len(teacher) == 5 * 3  # k=2 sampled + 1 greedy per prompt
    assert {r["model_id"] for r in student} == {"tiny-student"}
    revision = json.loads((run_dir / "train" / "summary.json").read_text())["weights_sha256"][:16]
    assert {r["model_revision"] for r in student} == {revision}
    assert all(r["error"] is None and r["completion_tokens"] > 0 for r in student + teacher)
    # Training moved the weights: the same seeded requests get other answers.
    assert [r["completion"] for r in student] != [r["completion"] for r in teacher]
    ev = json.loads((run_dir / "eval.json").read_text())
    assert ev["teacher"]["samples"] == ev["student"]["samples"] == 10
