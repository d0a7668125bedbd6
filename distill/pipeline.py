"""Runs the stages in order: a table of stage modules and a loop that knows nothing of any one.

Each stage module (distill/stages/) has NAME, NEEDS_STUDENT and run(ctx); adding a stage is
adding it to STAGE_TABLE. Verification runs inside `sample`, batch by batch.

When the recipe's output_dir is a bucket (s3://, gs://, ...), the stages work in a local copy
of the run directory (storage.cache_dir) that is pulled from the bucket first, so a run
restarted on another machine resumes, and pushed to it after every stage, every
$DISTILL_SYNC_SECONDS while a stage runs, and when the run fails.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from distill import ray_runtime, storage
from distill.backends import BACKENDS, Backend, BackendOptions, backend_name
from distill.recipe import Recipe
from distill.run import Run, RunBusy, lock, open_run  # noqa: F401  (open_run, RunBusy: the public API)
from distill.stages import Context, card, dataset, evaluate, prompts, report, sample, train
from distill.stages import filter as filtering
from distill.teachers import Teacher

STAGE_TABLE = (prompts, sample, filtering, dataset, train, evaluate, card, report)
STAGES = [stage.NAME for stage in STAGE_TABLE]


def make_backend(run: Run, verbose: bool = False, model: Teacher | None = None) -> Backend:
    """A backend serving the teacher, or `model` (the student, for evaluation) with the same
    settings, made by the factory the entry's `backend` names in the backend registry."""
    target = model or run.teacher
    c = run.recipe.cluster
    options = BackendOptions(
        engine_args=run.recipe.teacher.engine_args, seed=run.recipe.sampling.seed,
        batch_size=run.recipe.sampling.batch_size, ray_address=c.address, replicas=c.replicas,
        cpus_per_replica=c.cpus_per_replica, resources_per_replica=c.resources_per_replica,
        accelerator_type=c.accelerator_type, wait_for_replicas_s=c.wait_for_replicas_s,
        model_source=bucket_source(run, model), quiet=not verbose,
        reproducible=bool(run.recipe.sampling.reproducible),
    )
    return BACKENDS.get(backend_name(target)).fn(target, options)


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

    `backend` (teacher sampling) and `backend_for(model)` (evaluation, judges) replace the
    registry's backends, for tests.
    """
    if until is not None and until not in STAGES:
        raise ValueError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    table = STAGE_TABLE[: STAGES.index(until) + 1] if until else STAGE_TABLE
    if recipe.student is None:  # without a student the factory makes data only
        table = tuple(stage for stage in table if not stage.NEEDS_STUDENT)
    names = [stage.NAME for stage in table]
    decision = check_licence(recipe)  # before any compute
    run = open_run(recipe)
    if recipe.eval.require_teacher_probes:
        check_teacher_probed(run)
    from distill.licensing import to_dict

    storage.write_json(run.files.licence, to_dict(decision))
    summaries: dict = {}
    from distill.tracking import Tracker

    def serve(model: Teacher | None):
        start_ray(run, verbose)
        return make_backend(run, verbose, model)

    # The lock is released on return or error (a killed process releases it too); the syncer
    # pushes a remote run's copy in the background, and does nothing for a local run.
    with lock(run), storage.Syncer(run.mirror()) as sync:
        tracker = Tracker(run, names)
        ctx = Context(run, names, tracker, serve, progress_factory, teacher_backend_override=backend,
                      backend_for=backend_for)
        try:
            for stage in table:
                ctx.fresh_backends()
                summaries[stage.NAME] = stage.run(ctx)
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
        logging.getLogger(__name__).warning("lineage store not updated: %s", e)


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


SAFETY_DEFAULTS = ("harmbench", "do-not-answer", "over-refusal", "bias")  # when the recipe names no safety probe


class TeacherNotProbed(RuntimeError):
    """The recipe requires `distill probe-teacher` first, and it has not run for this teacher."""


def check_teacher_probed(run: Run) -> None:
    probed = run.files.read_json(run.files.teacher_probes)
    if probed is None or probed.get("revision") != run.teacher.revision or probed.get("teacher") != run.teacher.id:
        raise TeacherNotProbed(
            f"eval.require_teacher_probes: the teacher {run.teacher.id} has not been probed for this run yet; run "
            f"`distill probe-teacher {run.recipe._path or 'RECIPE'}` first, read {run.files.teacher_probes}, then run again")


def teacher_probe_specs(recipe: Recipe, limit: int | None) -> list:
    """The recipe's safety and bias probes (or the shipped ones when it names none), each at most
    `limit` items."""
    from distill.probes import PROBES
    from distill.recipe.schema import ProbeSpec

    specs = [s for s in recipe.eval.probes if PROBES.get(s.name).fn.safety]
    if not specs:
        specs = []
        for name in SAFETY_DEFAULTS:
            spec = ProbeSpec(name=name)
            spec._params = PROBES.get(name).params()
            specs.append(spec)
    if limit is None:
        return specs
    out = []
    for s in specs:
        capped = s.model_copy(update={"limit": min(s.limit or limit, limit)})
        capped._params = s.params
        out.append(capped)
    return out


def probe_teacher(recipe: Recipe, limit: int | None = 20, *, backend=None, progress_factory: Callable | None = None,
                  verbose: bool = False) -> tuple[Run, dict]:
    """Runs the safety and bias probes on the teacher alone and writes teacher_probes.json in the
    run directory, beside the licence decision: what a student would inherit, before any sampling.
    The answers go where the evaluate stage looks for the teacher's, so they are not asked twice."""
    import time

    from distill.licensing import to_dict
    from distill.stages import probing
    from distill.stages.evaluate import generate_timed

    decision = check_licence(recipe)
    run = open_run(recipe)
    storage.write_json(run.files.licence, to_dict(decision))
    loaded = probing.load_probes(recipe, teacher_probe_specs(recipe, limit))
    with lock(run):
        work = probing.missing(run, "teacher", run.teacher, loaded)
        if work:
            if backend is None:
                start_ray(run, verbose)
                backend = make_backend(run, verbose)
            progress = progress_factory("probing the teacher") if progress_factory else None
            if progress:
                progress.start(total=len(work))
            results, _ = generate_timed(backend, work, progress)
            probing.write_answers(run, "teacher", run.teacher, work, results)
        table = probing.saved_for(run.files, "teacher", run.teacher)
        judges: dict[str, Backend] = {}

        def judge(model_id: str) -> Backend:
            if model_id not in judges:
                from distill.teachers import load_teacher

                start_ray(run, verbose)
                judges[model_id] = make_backend(run, verbose, load_teacher(model_id, recipe.base_dir))
            return judges[model_id]

        out = {"teacher": run.teacher.id, "revision": run.teacher.revision, "limit": limit, "written": time.time(),
               "probes": probing.results(loaded, {"teacher": table}, judge)}
        storage.write_json(run.files.teacher_probes, out)
    return run, out
