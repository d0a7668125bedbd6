"""Runs the stages in order and owns the run directory.

The run id is derived from the recipe's content hash: the same recipe (and the same
prompt files) resumes the same run; a changed recipe is a new run beside it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from distill import storage
from distill.lineage import code_version
from distill.recipe import Recipe
from distill.teachers import Teacher, load_teacher

STAGES = ["prompts", "sample", "dataset"]  # verification runs inside `sample`, batch by batch


@dataclass
class Run:
    recipe: Recipe
    teacher: Teacher
    dir: Path
    id: str
    recipe_hash: str
    code_version: str


def open_run(recipe: Recipe) -> Run:
    recipe_hash = recipe.content_hash()
    run_id = recipe_hash[:12]
    out = Path(recipe.output_dir)
    if not out.is_absolute():
        out = Path.cwd() / out
    run_dir = out / recipe.name / run_id
    teacher = load_teacher(recipe.teacher.id, recipe.base_dir)
    run = Run(recipe, teacher, run_dir, run_id, recipe_hash, code_version())
    resolved = {
        "recipe_hash": recipe_hash,
        "run_id": run_id,
        "code_version": run.code_version,
        "recipe": recipe.resolved(),
        "teacher": teacher.model_dump(mode="json"),
    }
    target = run_dir / "recipe.resolved.yaml"
    if not target.exists():
        storage.write_text(target, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    return run


def make_backend(run: Run, verbose: bool = False):
    from distill.backends.vllm_ray import VLLMRayBackend

    c = run.recipe.cluster
    return VLLMRayBackend(
        run.teacher, run.recipe.teacher.engine_args, seed=run.recipe.sampling.seed, replicas=c.replicas,
        cpus_per_replica=c.cpus_per_replica, accelerator_type=c.accelerator_type,
        batch_size=run.recipe.sampling.batch_size, quiet=not verbose,
    )


def start_ray(run: Run, verbose: bool = False) -> None:
    import ray

    if ray.is_initialized():
        return
    # A data factory does not report usage to anyone unless its user opts in.
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address=run.recipe.cluster.address,
        include_dashboard=False,
        log_to_driver=verbose,  # worker logs (vLLM's included) stay in Ray's session log folder
        logging_level="INFO" if verbose else "WARNING",
    )


def run_pipeline(recipe: Recipe, until: str | None = None, *, backend=None, progress_factory: Callable | None = None,
                 verbose: bool = False) -> tuple[Run, dict]:
    """Runs stages up to and including `until`; returns the run and each stage's summary."""
    from distill.stages.dataset import build_dataset
    from distill.stages.prompts import build_prompts
    from distill.stages.sample import sample_teacher

    if until is not None and until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    run = open_run(recipe)
    summaries: dict = {}
    with _lock(run.dir):  # released on return or error; a killed process releases it too
        for stage in STAGES:
            if stage == "prompts":
                summaries["prompts"] = build_prompts(recipe, run.dir)
            elif stage == "sample":
                if backend is None:
                    start_ray(run, verbose)
                    backend = make_backend(run, verbose)
                progress = progress_factory("sampling") if progress_factory else None
                summaries["sample"] = sample_teacher(run, backend, progress)
            elif stage == "dataset":
                summaries["dataset"] = build_dataset(run)
            if stage == until:
                break
    return run, summaries


class RunBusy(RuntimeError):
    pass


def _lock(run_dir: Path):
    """One process per run directory: two at once would sample the same work twice."""
    import fcntl

    f = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunBusy(f"{run_dir} is in use by another distill process (pid {holder}); wait for it or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
