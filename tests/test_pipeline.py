"""The pipeline: one process per run directory, and --until stops where asked."""

from __future__ import annotations

import pytest
import yaml

from distill.pipeline import RunBusy, open_run, run_pipeline
from distill.run import lock
from distill.recipe import load_recipe


@pytest.fixture
def recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "pipe",
        "teacher": "smollm2-135m-instruct",
        "prompts": {"train": [{"source": "arithmetic", "count": 5}], "eval": [{"source": "arithmetic", "count": 2, "seed": 9}]},
        "tracking": {"wandb": "disabled"},
    }))
    return load_recipe(tmp_path / "r.yaml")


class NoBackend:
    def describe(self):
        raise AssertionError("the sample stage must not run")


def test_a_second_process_on_the_same_run_is_refused(recipe):
    held = lock(open_run(recipe))
    try:
        with pytest.raises(RunBusy, match="in use by another distill process"):
            run_pipeline(recipe, until="prompts", backend=NoBackend())
    finally:
        held.close()
    run, summaries = run_pipeline(recipe, until="prompts", backend=NoBackend())  # free again
    assert summaries == {"prompts": {"train": 5, "eval": 2, "train_overlapping_eval": 0}}


def test_until_prompts_stops_before_sampling(recipe):
    run, summaries = run_pipeline(recipe, until="prompts", backend=NoBackend())
    assert list(summaries) == ["prompts"]
    assert (run.dir / "prompts" / "train.parquet").is_file() and not (run.dir / "samples").exists()


def test_unknown_stage_is_refused(recipe):
    with pytest.raises(ValueError, match="stages: prompts, sample, filter, dataset, train, evaluate, card, report"):
        run_pipeline(recipe, until="bogus", backend=NoBackend())
