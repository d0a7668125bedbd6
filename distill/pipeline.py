"""Runs the stages in order and owns the run directory.

The run id is derived from the recipe's content hash: the same recipe (and the same
prompt files) resumes the same run; a changed recipe is a new run beside it.

When the recipe's output_dir is a bucket (s3://, gs://, ...), the stages work in a local copy
of the run directory (storage.cache_dir) that is pulled from the bucket first, so a run
restarted on another machine resumes, and pushed to it after every stage, every
$DISTILL_SYNC_SECONDS while a stage runs, and when the run fails.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from distill import ray_runtime, storage
from distill.lineage import code_version
from distill.recipe import Recipe
from distill.teachers import Teacher, load_teacher

# Verification runs inside `sample`, batch by batch.
STAGES = ["prompts", "sample", "filter", "dataset", "train", "evaluate", "card", "report"]


@dataclass
class Run:
    recipe: Recipe
    teacher: Teacher
    dir: Path  # where the stages read and write: the run directory, or the local copy of a remote one
    id: str
    recipe_hash: str
    code_version: str
    remote: str | None = None  # the run directory's URI when output_dir is a bucket


def open_run(recipe: Recipe) -> Run:
    """The run directory of this recipe, made or resumed; a remote one is pulled into its local copy first."""
    recipe_hash = recipe.content_hash()
    run_id = recipe_hash[:12]
    remote = None
    if storage.is_remote(recipe.output_dir):
        remote = storage.join(recipe.output_dir, recipe.name, run_id)
        run_dir = storage.cache_dir(remote)
        storage.Mirror(remote, run_dir).pull()
    else:
        run_dir = storage.local_path(recipe.output_dir) / recipe.name / run_id
    teacher = load_teacher(recipe.teacher.id, recipe.base_dir)
    run = Run(recipe, teacher, run_dir, run_id, recipe_hash, code_version(), remote)
    resolved = {
        "recipe_hash": recipe_hash,
        "samples_key": recipe.samples_key(),
        "run_id": run_id,
        "code_version": run.code_version,
        "recipe": recipe.resolved(),
        "teacher": teacher.model_dump(mode="json"),
    }
    target = run_dir / "recipe.resolved.yaml"
    if not target.exists():
        storage.write_text(target, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    return run


def make_backend(run: Run, verbose: bool = False, model: Teacher | None = None):
    """A backend serving the teacher, or `model` (the student, for evaluation) with the same settings."""
    target = model or run.teacher
    if target.endpoint is not None:  # served elsewhere over HTTP: no local engine
        from distill.backends.openai_http import make_http_backend

        return make_http_backend(target, run.recipe.sampling.batch_size)
    from distill.backends.vllm_ray import VLLMRayBackend

    c = run.recipe.cluster
    return VLLMRayBackend(
        model or run.teacher, run.recipe.teacher.engine_args, seed=run.recipe.sampling.seed, replicas=c.replicas,
        cpus_per_replica=c.cpus_per_replica, resources_per_replica=c.resources_per_replica,
        accelerator_type=c.accelerator_type, wait_for_replicas_s=c.wait_for_replicas_s,
        model_source=bucket_source(run, model),
        batch_size=run.recipe.sampling.batch_size, quiet=not verbose,
    )


def bucket_source(run: Run, model: Teacher | None) -> str | None:
    """The bucket URI of a model made by this run (the student), when the run directory is in a
    bucket Ray Data LLM can download from (s3://, gs://): engines on other nodes have no copy of
    the driver's local one. None otherwise: the engines load model.model."""
    if model is None or not run.remote or storage.protocol(run.remote) not in ("s3", "gs"):
        return None
    try:
        inside = Path(model.model).resolve().relative_to(run.dir.resolve())
    except ValueError:
        return None  # a teacher, or a model from elsewhere
    return storage.join(run.remote, *inside.parts)


def start_ray(run: Run, verbose: bool = False) -> None:
    ray_runtime.start_ray(run.recipe.cluster.address, verbose)


def run_pipeline(recipe: Recipe, until: str | None = None, *, backend=None, progress_factory: Callable | None = None,
                 verbose: bool = False, backend_for: Callable | None = None) -> tuple[Run, dict]:
    """Runs stages up to and including `until`; returns the run and each stage's summary.

    `backend` (teacher sampling) and `backend_for(model)` (evaluation) replace the vLLM
    backends, for tests.
    """
    if until is not None and until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    stages = STAGES[: STAGES.index(until) + 1] if until else STAGES
    if recipe.student is None:  # without a student the factory makes data only
        stages = [s for s in stages if s in ("prompts", "sample", "filter", "dataset", "report")]
    decision = check_licence(recipe)  # before any compute
    run = open_run(recipe)
    from distill.licensing import to_dict

    storage.write_json(run.dir / "licence.json", to_dict(decision))
    summaries: dict = {}
    from distill.tracking import Tracker

    # The lock is released on return or error (a killed process releases it too); the syncer
    # pushes a remote run's copy in the background, and does nothing for a local run.
    with _lock(run.dir), storage.Syncer(run_mirror(run)) as sync:
        tracker = Tracker(run, stages)
        try:
            for stage in stages:
                summaries[stage] = _run_stage(stage, run, tracker, backend, backend_for, progress_factory, verbose,
                                              stages)
                sync.push()
        except BaseException:
            tracker.finish(failed=True)
            _register(run, failing=True)  # what exists is registered, whether the run finished or not
            sync.push(failing=True)  # what exists is kept, for a rerun anywhere to resume from
            raise
        _register(run)
        tracker.finish()
        sync.push()
    return run, summaries


def run_mirror(run: Run) -> storage.Mirror | None:
    """The mirror between a remote run directory and its local copy; None for a local run."""
    return storage.Mirror(run.remote, run.dir) if run.remote else None


def _register(run: Run, failing: bool = False) -> None:
    """Records the run's artifacts and their parents in the lineage store (the driver's job:
    for a bucket output_dir the default store is an SQLite file in this machine's cache, see
    lineage_store.default_url)."""
    from distill.lineage_store import open_store, register_run

    try:
        register_run(open_store(None, run.recipe.output_dir), run.dir)
    except Exception as e:
        if not failing:
            raise
        # The run's own error matters more; a later successful run registers everything.
        import logging

        logging.getLogger(__name__).warning("lineage store not updated: %s", e)


def _run_stage(stage: str, run: Run, tracker, backend, backend_for, progress_factory, verbose: bool,
               stages: list[str] = STAGES):
    recipe = run.recipe
    bar = (lambda label: progress_factory(label)) if progress_factory else (lambda label: None)
    if stage == "prompts":
        from distill.stages.prompts import build_prompts

        out = build_prompts(recipe, run.dir)
        tracker.log(out, "prompts")
        return out
    if stage == "sample":
        from distill.stages.evaluate import TEACHER_EVAL, teacher_eval_work, write_answers
        from distill.stages.sample import sample_teacher
        from distill.stages.verify import model_verifiers

        if backend is None:
            start_ray(run, verbose)
            backend = make_backend(run, verbose)
        judge = served_by_id(run, verbose, backend_for) if model_verifiers(recipe.verifiers) else None
        # The teacher's evaluation rides along with sampling: its engine starts once, not twice.
        evaluation = teacher_eval_work(run) if "evaluate" in stages else None
        out = sample_teacher(run, backend, bar("sampling"), backend_for=judge,
                             side_work=[{**w, "work_id": TEACHER_EVAL + w["work_id"]} for w in evaluation[1]]
                             if evaluation else None)
        if evaluation:
            prompts, work = evaluation
            write_answers(run, "teacher", run.teacher, prompts, work,
                          [{**r, "work_id": r["work_id"][len(TEACHER_EVAL):]} for r in out.side_results], judge)
        tracker.log({"samples": out.samples_total, "accepted": out.accepted, "errors": out.errors,
                     "accept_rate": out.accepted / out.samples_total if out.samples_total else 0.0,
                     "tokens_per_second": out.tokens_per_second, "verifiers": out.per_verifier,
                     "rounds": out.rounds, "prompts_never_accepted": len(out.never_passed)}, "sample")
        return out
    if stage == "filter":
        from distill.stages.filter import filter_samples

        out = filter_samples(run, served_by_id(run, verbose, backend_for), progress_factory)
        tracker.log({"candidates": out["candidates"], "kept": out["kept"],
                     "filters": {f["filter"]: {k: f[k] for k in ("seen", "flagged", "dropped", "marked", "redacted")}
                                 for f in out["filters"]}}, "filter")
        return out
    if stage == "dataset":
        from distill.stages.dataset import build_dataset, read_dataset

        out = build_dataset(run)
        tracker.log({k: out[k] for k in ("rows", "samples", "prompts_with_a_kept_sample", "dropped")}, "dataset")
        tracker.table("dataset/rows", _sample_rows(read_dataset(run.dir)))
        return out
    if stage == "train":
        from distill.stages.train import train_student

        out = train_student(run, bar("training"), report_to=["wandb"] if tracker.active else [])
        tracker.summary({k: out[k] for k in ("steps", "train_loss", "trained_tokens", "tokens_per_second")}, "train")
        return out
    if stage == "evaluate":
        from distill.stages.evaluate import evaluate

        def serve(model):
            if backend_for is not None:
                return backend_for(model)
            start_ray(run, verbose)
            return make_backend(run, verbose, model)

        out = evaluate(run, serve, progress_factory, served_by_id(run, verbose, backend_for))
        tracker.summary({role: {k: v for k, v in out[role].items() if isinstance(v, (int, float))}
                         for role in ("teacher", "student")}, "eval")
        return out
    if stage == "card":
        from distill.stages.card import write_card

        return {"card": str(write_card(run.dir))}
    if stage == "report":
        from distill.report import build_report

        return {"report": str(build_report(run.dir))}
    raise AssertionError(stage)


def served_by_id(run: Run, verbose: bool, backend_for: Callable | None = None) -> Callable:
    """model id (a teacher id or YAML) -> a backend serving it with the run's settings, made once
    per id, started when first asked for: the judge verifier and guard-model filters use it."""
    made: dict = {}

    def serve(model_id: str):
        if model_id not in made:
            model = load_teacher(model_id, run.recipe.base_dir)
            if backend_for is not None:
                made[model_id] = backend_for(model)
            else:
                start_ray(run, verbose)
                made[model_id] = make_backend(run, verbose, model)
        return made[model_id]

    return serve


def _sample_rows(table, limit: int = 200) -> list[dict]:
    """A readable slice of the dataset for the tracker's table view."""
    rows = table.slice(0, limit).to_pylist()
    return [{"prompt_id": r["prompt_id"], "prompt": r["prompt"][-1]["content"], "completion": r["completion"][0]["content"],
             "teacher": r["teacher_id"]} for r in rows]


class RunBusy(RuntimeError):
    pass


class LicenceRefused(RuntimeError):
    """The terms of a teacher, the base model or a prompt set forbid what the recipe would do."""

    def __init__(self, decision):
        self.decision = decision
        super().__init__("; ".join(f"{i.rule}: {i.message}" for i in decision.refusals))


def check_licence(recipe: Recipe):
    """The licence engine's decision for the recipe; raises LicenceRefused on an unacknowledged refusal."""
    from distill.recipe.licence import decide_for_recipe

    decision = decide_for_recipe(recipe)
    if decision.refusals:
        raise LicenceRefused(decision)
    return decision


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
