"""Commands on Ray jobs: submit, status, logs, stop."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import typer

from distill.cli.app import app, console, err
from distill.cli.recipes import _load, _print_lines, _refuse_if_forbidden

_ADDRESS_HELP = "the cluster's Ray Jobs API, http://HEAD:8265 (default: $RAY_ADDRESS)"


@contextmanager
def _jobs_errors():
    """A JobsError becomes its message on stderr and its exit code (2: bad input, 1: the cluster)."""
    from distill.jobs import JobsError

    try:
        yield
    except JobsError as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code)


def _jobs_client(address: Optional[str]):
    """(client, address) for the Ray Jobs API at --address or $RAY_ADDRESS."""
    from distill import jobs

    with _jobs_errors():
        address = jobs.resolve_address(address)
        return jobs.make_client(address), address


@app.command()
def submit(
    recipe: str = typer.Argument(..., help="path of a recipe YAML; its folder ships with the job"),
    address: Optional[str] = typer.Option(None, help=_ADDRESS_HELP),
    output_dir: Optional[str] = typer.Option(
        None, help="where the run directory goes, as the cluster sees it: on a cluster of several machines a "
                   "bucket (s3://BUCKET/runs, gs://BUCKET/runs) or a path mounted at the same place on every "
                   "node (NFS); default: the recipe's output_dir, a relative one taken from this directory"),
    until: Optional[str] = typer.Option(None, help="stop after this stage"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="the job's output shows Ray and vLLM worker logs"),
    env: list[str] = typer.Option(
        [], "--env", metavar="NAME",
        help="send this variable of your environment with the job (repeat for more: --env WANDB_API_KEY "
             "--env HF_TOKEN); whoever can reach the cluster's Jobs API can read it"),
):
    """Run a recipe on a Ray cluster as a Ray job (`distill run` there); prints the job id."""
    from distill import jobs
    from distill.pipeline import STAGES

    if until is not None and until not in STAGES:
        err.print(f"--until: unknown stage {until!r}; stages: {', '.join(STAGES)}")
        raise typer.Exit(2)
    with _jobs_errors():
        address = jobs.resolve_address(address)
    r = _load(recipe)
    _refuse_if_forbidden(r, recipe)  # before the cluster sees anything
    with _jobs_errors():
        sub = jobs.submit(recipe, r, address, output_dir, until, verbose, env=env)
    print(sub.job_id)  # alone on stdout, for scripts: JOB=$(distill submit ...)
    for line in (f"submitted to {sub.address} ({sub.shipped_mb:.1f} MiB of recipe files)",
                 f"run directory (on the cluster): {sub.run_dir}",
                 f"follow it: distill logs {sub.job_id} --follow   (status, stop: the same id)",
                 *jobs.secret_hints(env)):
        err.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def status(job_id: str = typer.Argument(..., help="a job id, as distill submit printed it"),
           address: Optional[str] = typer.Option(None, help=_ADDRESS_HELP)):
    """A submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), run directory and times."""
    from distill import jobs

    client, address = _jobs_client(address)
    with _jobs_errors():
        _print_lines(jobs.describe(jobs.job_info(client, job_id, address)))


@app.command()
def logs(job_id: str = typer.Argument(..., help="a job id, as distill submit printed it"),
         address: Optional[str] = typer.Option(None, help=_ADDRESS_HELP),
         follow: bool = typer.Option(False, "--follow", "-f", help="keep printing until the job ends")):
    """A submitted job's output: what `distill run` printed on the cluster."""
    import sys

    from distill import jobs

    client, address = _jobs_client(address)
    with _jobs_errors():
        jobs.job_info(client, job_id, address)  # an unknown id is an error, not an empty log
    if follow:
        jobs.follow_logs(client, job_id, lambda text: (sys.stdout.write(text), sys.stdout.flush()))
    else:
        sys.stdout.write(client.get_job_logs(job_id))


@app.command()
def stop(job_id: str = typer.Argument(..., help="a job id, as distill submit printed it"),
         address: Optional[str] = typer.Option(None, help=_ADDRESS_HELP)):
    """Stop a submitted job; waits until the cluster reports it ended. Submitting the recipe again resumes its run."""
    from distill import jobs

    client, address = _jobs_client(address)
    with _jobs_errors():
        final = jobs.stop(client, job_id, address)
    console.print(f"job {job_id}: {final}", highlight=False)
    if final not in jobs.TERMINAL:
        err.print(f"the job has not ended yet; `distill status {job_id}` shows when it has", highlight=False)
        raise typer.Exit(1)
