"""A student run on the tiny model with fake sampling and evaluation: the arithmetic backend, the
recipe, a run sampled up to its dataset, and a whole run (real training, no engine)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from support.models import write_tiny_teacher

SECRET = "planted-wandb-key-0123456789abcdef0123"  # set as WANDB_API_KEY: must never reach a file the run writes


class ArithmeticBackend:
    """Answers 'What is a + b?' right, or wrong when `wrong` says so or the question is in
    `wrong_for`; counts what it served."""

    name = "fake-arithmetic"

    def __init__(self, wrong: bool = False, wrong_for: frozenset = frozenset()):
        self.wrong, self.wrong_for, self.requests = wrong, wrong_for, []

    def describe(self):
        return {"backend": self.name, "version": "1", "engine_args": {}}

    def generate(self, requests):
        self.requests.extend(requests)
        for start in range(0, len(requests), 8):
            out = []
            for r in requests[start:start + 8]:
                q = r["messages"][-1]["content"]
                nums = [int(x) for x in q.replace("?", " ").split() if x.isdigit()]
                total = sum(nums) + (1 if self.wrong or q in self.wrong_for else 0)
                out.append({"work_id": r["work_id"], "text": f"Adding the numbers gives {total}. The answer is {total}.",
                            "prompt_tokens": 20, "completion_tokens": 12, "finish_reason": "stop", "error": ""})
            yield out


def student_recipe(tmp_path: Path, tiny_model: Path, **train) -> Path:
    write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)
    recipe = {
        "name": "student-unit",
        "teacher": "tiny.yaml",
        "prompts": {"train": [{"source": "arithmetic", "count": 24, "seed": 1}],
                    "eval": [{"source": "arithmetic", "count": 6, "seed": 2}]},
        "sampling": {"n": 2, "max_tokens": 32, "seed": 3},
        "verifiers": [{"name": "final-number"}],
        "student": {"name": "tiny-student", "base": "tiny.yaml"},  # the teacher's weights, as in the demo
        "train": {"epochs": 1, "batch_size": 4, "max_length": 128, "learning_rate": 1e-4, "save_steps": 2, **train},
        "eval": {"k": 2},
        "tracking": {"wandb": "offline"},
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    return tmp_path / "r.yaml"


def sampled_run(tmp_path, tiny_model, monkeypatch, **train):
    """The student recipe's run up to its dataset, in tmp_path, ready for the train stage."""
    from distill.pipeline import run_pipeline
    from distill.recipe import load_recipe

    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(student_recipe(tmp_path, tiny_model, **train))
    run, _ = run_pipeline(recipe, until="dataset", backend=ArithmeticBackend())
    return run


def run_student_pipeline(tiny_model: Path, tmp: Path) -> dict:
    """The whole pipeline in tmp: {run, summaries, served (the models served for evaluation),
    teacher (its backend)}. The teacher gets every held-out question wrong, the student none."""
    from distill.pipeline import run_pipeline
    from distill.prompts import ArithmeticParams, generate_arithmetic
    from distill.recipe import load_recipe

    old = os.getcwd()
    os.chdir(tmp)
    os.environ["WANDB_API_KEY"] = SECRET
    try:
        held_out = frozenset(p["question"] for p in generate_arithmetic(ArithmeticParams(count=6, seed=2)))
        teacher = ArithmeticBackend(wrong_for=held_out)
        served = []

        def backend_for(model):
            served.append(model)
            return ArithmeticBackend()

        run, summaries = run_pipeline(load_recipe(student_recipe(tmp, tiny_model)), backend=teacher,
                                      backend_for=backend_for)
    finally:
        os.environ.pop("WANDB_API_KEY", None)
        os.chdir(old)
    return {"run": run, "summaries": summaries, "served": served, "teacher": teacher}


class CrashAt:
    """A progress bar that raises at a given step: a training killed mid-way."""

    def __init__(self, step):
        self.step, self.seen = step, 0

    def start(self, total, completed=0):
        self.seen = completed

    def advance(self, n):
        self.seen += n
        if self.seen == self.step:
            raise KeyboardInterrupt("killed")
