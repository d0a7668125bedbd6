"""Commands on probes and the promotion gate: probe-teacher, gate."""

from __future__ import annotations

from typing import Optional

import typer
from distill.cli.app import app, console, err
from distill.cli.probe_tables import print_skipped, probes_table


@app.command("probe-teacher")
def probe_teacher(
    recipe: str = typer.Argument(..., help="path of a recipe YAML"),
    limit: Optional[int] = typer.Option(20, min=1, help="at most this many items per probe (seeded subset)"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Ray and vLLM worker logs"),
):
    """Probe the teacher's safety and bias before any sampling: what a student would inherit. Writes teacher_probes.json in the run directory."""
    from distill.cli.progress import LogBar
    from distill.cli.recipes import _load, _refuse_if_forbidden
    from distill.pipeline import RunBusy
    from distill.pipeline import probe_teacher as run_probes

    r = _load(recipe)
    _refuse_if_forbidden(r, recipe)
    try:
        the_run, out = run_probes(r, limit, progress_factory=LogBar, verbose=verbose)
    except RunBusy as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    console.print(probes_table(out["probes"], ("teacher",)))
    print_skipped(out["probes"])
    console.print(f"wrote {the_run.files.teacher_probes}", highlight=False, soft_wrap=True)


@app.command()
def gate(run_dir: str = typer.Argument(..., help="a run directory: runs/<name>/<run id>")):
    """Print the promotion gate's decision for a run; exit 1 when the student is held (for CI pipelines), 2 when there is none."""
    from distill.cli.recipes import UNREADABLE, _unreadable_run
    from distill.run import RunDir
    from distill.stages.gate import summary_text

    files = RunDir(run_dir)
    try:
        ev = files.read_json(files.metrics)
    except UNREADABLE as e:
        _unreadable_run(run_dir, e)
    if ev is None:
        err.print(f"{run_dir}: no eval.json: the evaluate stage has not run here (or it is not a run directory)",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if not ev.get("gate"):
        err.print(f"{run_dir}: the recipe has no `gate:` conditions, so nothing decided promotion; add some and "
                  "run it again (the evaluation is reused)", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(summary_text(ev["gate"]), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if ev["gate"]["decision"] == "held" else 0)
