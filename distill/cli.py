"""`distill validate | run | submit | ls`: the factory's command line."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False, help="A distillation and synthetic-data factory.")
console = Console()
err = Console(stderr=True)


def _load(recipe: str):
    from distill.recipe import RecipeError, load_recipe

    try:
        return load_recipe(recipe)
    except RecipeError as e:
        for p in e.problems:
            # soft_wrap: one problem per line whatever the terminal width, so it can be grepped
            err.print(p.render(e.file), markup=False, highlight=False, soft_wrap=True)
        err.print(f"{len(e.problems)} problem(s) in {e.file}", style="bold red")
        raise typer.Exit(2)


def _decide(recipe, file: str):
    """The licence decision, or exit 2 when the engine cannot judge the recipe's licences."""
    from distill.licensing import LicenceError, UnknownLicence
    from distill.recipe.licence import decide_for_recipe

    try:
        return decide_for_recipe(recipe)
    except (LicenceError, UnknownLicence) as e:
        err.print(f"{file}: licence: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)


def _print_lines(lines: list[str], to=None) -> None:
    for line in lines:
        (to or console).print(line, markup=False, highlight=False, soft_wrap=True)


def _refuse_if_forbidden(recipe, file: str):
    """Exit 2, citing the clause and the ways out, when the terms forbid the recipe; else the decision."""
    from distill.licensing import render_text

    decision = _decide(recipe, file)
    if decision.refusals:
        _print_lines(render_text(decision), err)
        err.print(f"{file}: refused by the licence terms above ({len(decision.refusals)} rule(s)); "
                  "follow a way out, or record an explicit student.acknowledge entry naming the rule",
                  style="bold red", highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    return decision


@app.command()
def validate(recipe: str = typer.Argument(..., help="path of a recipe YAML")):
    """Check a recipe and its licences: every problem is reported at once; exit code 2 if any."""
    r = _load(recipe)
    decision = _refuse_if_forbidden(r, recipe)
    console.print(f"{recipe}: ok (name {r.name}, run id {r.content_hash()[:12]}); licence decision: {decision.verdict}",
                  highlight=False, soft_wrap=True)
    if decision.obligations or decision.issues:
        from distill.licensing import render_text

        _print_lines(render_text(decision)[1:])  # the verdict is on the line above


@app.command()
def licence(
    recipe: str = typer.Argument(..., help="path of a recipe YAML"),
    json_out: bool = typer.Option(False, "--json", help="the decision as JSON"),
):
    """What the licence terms decide for a recipe: allowed or refused, the student's licence, every obligation, each with its clause. Runs nothing."""
    import json

    from distill.licensing import render_text, to_dict

    decision = _decide(_load(recipe), recipe)
    if json_out:
        print(json.dumps(to_dict(decision), indent=2))
    else:
        _print_lines(render_text(decision))
    raise typer.Exit(2 if decision.refusals else 0)


class _Bar:
    """The sample stage's progress, as a rich bar."""

    def __init__(self, progress: Progress, label: str):
        self.progress, self.label, self.task = progress, label, None

    def start(self, total: int, completed: int = 0):
        self.task = self.progress.add_task(self.label, total=total, completed=completed)

    def advance(self, n: int):
        self.progress.advance(self.task, n)


@app.command()
def run(
    recipe: str = typer.Argument(..., help="path of a recipe YAML"),
    until: Optional[str] = typer.Option(None, help="stop after this stage"),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="show Ray and vLLM worker logs"),
):
    """Run a recipe (or resume it: the same recipe continues the same run)."""
    from distill.pipeline import STAGES, run_pipeline

    if until is not None and until not in STAGES:
        err.print(f"--until: unknown stage {until!r}; stages: {', '.join(STAGES)}")
        raise typer.Exit(2)
    r = _load(recipe)
    _refuse_if_forbidden(r, recipe)  # before any compute
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
    from distill.pipeline import RunBusy

    try:
        with Progress(*columns, console=console, transient=False) as progress:
            the_run, summaries = run_pipeline(r, until, progress_factory=lambda label: _Bar(progress, label),
                                              verbose=verbose)
    except RunBusy as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    where = f"{the_run.remote} (local copy: {the_run.dir})" if the_run.remote else the_run.dir
    console.print(f"run directory: {where}", highlight=False, soft_wrap=True)
    _print_summary(summaries)


def _print_summary(summaries: dict) -> None:
    if p := summaries.get("prompts"):
        console.print(f"prompts: {p['train']} train, {p['eval']} eval held out"
                      + (f" ({p['train_overlapping_eval']} train prompts dropped: also in eval)" if p["train_overlapping_eval"] else ""))
    if s := summaries.get("sample"):
        t = Table(title="samples", show_header=True)
        for col in ("prompts", "samples", "new this run", "errors", "accepted", "tokens/s"):
            t.add_column(col, justify="right")
        t.add_row(str(s.prompts), str(s.samples_total), str(s.samples_new), str(s.errors), str(s.accepted),
                  f"{s.tokens_per_second:.1f}")
        console.print(t)
        if s.reused_from:
            console.print(f"samples reused from run {s.reused_from} (same teacher, prompts, sampling and verifiers)")
        if s.per_verifier:
            v = Table(title="verifiers", show_header=True)
            for col in ("verifier", "passed", "failed", "cannot verify", "accept rate"):
                v.add_column(col, justify="right")
            for name, c in s.per_verifier.items():
                scored = c["passed"] + c["failed"] + c["none"]
                v.add_row(name, str(c["passed"]), str(c["failed"]), str(c["none"]),
                          f"{c['passed'] / scored:.1%}" if scored else "-")
            console.print(v)
        if len(s.rounds) > 1:
            console.print("rounds: " + "; ".join(f"{r['round']}: {r['accepted']}/{r['samples']} accepted"
                                                 for r in s.rounds)
                          + f"; {len(s.never_passed)} prompts never accepted (listed in report.html)")
    if f := summaries.get("filter"):
        if f["filters"]:
            t = Table(title=f"filters: {f['kept']} of {f['candidates']} accepted samples kept", show_header=True)
            for col in ("filter", "mode", "seen", "flagged", "dropped", "marked", "redacted", "flagged by kind"):
                t.add_column(col, justify="left" if col in ("filter", "mode", "flagged by kind") else "right")
            for x in f["filters"]:
                kinds = ", ".join(f"{c} {n}" for c, n in list(x["by_category"].items())[:4]) or "-"
                t.add_row(x["filter"], x["mode"], *(str(x[k]) for k in ("seen", "flagged", "dropped", "marked", "redacted")),
                          Text(kinds))
            console.print(t)
    if d := summaries.get("dataset"):
        dropped = ", ".join(f"{reason} {n}" for reason, n in d["dropped"].items()) or "none"
        console.print(f"dataset: {d['rows']} rows kept of {d['samples']} samples "
                      f"({d['prompts_with_a_kept_sample']} prompts); dropped: {dropped}")
    if t := summaries.get("train"):
        console.print(f"train: {t['method']}, {t['steps']} steps, loss {t['train_loss']:.4f}, "
                      f"{t['tokens_per_second']:.0f} tokens/s" + (" (resumed from a checkpoint)" if t["resumed"] else ""))
    if e := summaries.get("evaluate"):
        _print_eval(e)
    for key in ("card", "report"):
        if x := summaries.get(key):
            console.print(f"{key}: {x[key]}", highlight=False, soft_wrap=True)


def _print_eval(e: dict) -> None:
    t = Table(title=f"student vs teacher on {e['held_out_prompts']} held-out prompts (k={e['k']})")
    for col in ("model", "pass@1", f"pass@{e['k']}", "greedy", "mean tokens", "cost / correct"):
        t.add_column(col, justify="right")
    for role in ("teacher", "student"):
        m = e[role]
        cost = "-" if m["cost_per_correct"] is None else f"{m['cost_per_correct']:.3g}"
        t.add_row(f"{role}: {m['model']}", f"{m['pass@1']:.1%}", f"{m['pass@k']:.1%}", f"{m['greedy_accuracy']:.1%}",
                  f"{m['mean_output_tokens']:.1f}", cost)
    console.print(t)


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


@app.command()
def card(run_dir: str = typer.Argument(..., help="a run directory: runs/<name>/<run id>")):
    """Rebuild the student's model card (student/README.md) and lineage.json from the run directory alone."""
    from distill.stages.card import write_card

    try:
        path = write_card(run_dir)
    except FileNotFoundError as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


@app.command()
def report(run_dir: str = typer.Argument(..., help="a run directory: runs/<name>/<run id>")):
    """Redraw report.html from the run directory."""
    from pathlib import Path

    from distill.report import build_report

    if not (Path(run_dir) / "recipe.resolved.yaml").is_file():
        err.print(f"{run_dir}: not a distill run directory (no recipe.resolved.yaml)", markup=False, highlight=False)
        raise typer.Exit(2)
    console.print(f"wrote {build_report(run_dir)}", highlight=False, soft_wrap=True)


@app.command()
def lineage(
    teacher: Optional[str] = typer.Option(None, help="what derives from this teacher (id or model)"),
    dataset: Optional[str] = typer.Option(None, help="what derives from this dataset (name or content hash)"),
    licence: Optional[str] = typer.Option(None, help="what derives from anything under this licence id"),
    model: Optional[str] = typer.Option(None, help="the full ancestry of this model (name or weights hash)"),
    json_out: bool = typer.Option(False, "--json", help="rows as JSON"),
    store: Optional[str] = typer.Option(None, help="SQLAlchemy URL of the lineage store (default: $DISTILL_LINEAGE_URL, else runs/lineage.sqlite)"),
    runs_dir: str = typer.Option("runs", help="where the default SQLite store lives (for a bucket URI, in this "
                                              "machine's local copy of it: the store is the driver's)"),
):
    """Query the lineage store: what derives from a teacher, dataset or licence (for a licence change or a takedown), or a model's ancestry."""
    from distill.lineage_store import lineage_command

    lineage_command(teacher=teacher, dataset=dataset, licence=licence, model=model, json_out=json_out,
                    store_url=store, runs_dir=runs_dir)


@app.command("ls")
def list_registered(name: Optional[str] = typer.Argument(None, help="a verifier, filter or prompt source: show its full documentation")):
    """List registered verifiers, filters, prompt sources and teachers, from the registries; with a NAME, document that one."""
    from distill.filters import FILTERS
    from distill.prompts import PROMPT_SOURCES
    from distill.teachers import catalog, load_teacher
    from distill.verifiers import VERIFIERS

    registries = (VERIFIERS, FILTERS, PROMPT_SOURCES)
    if name is not None:
        found = [r for r in registries if name in r]
        if not found:
            from distill.registry import closest

            everything = sorted(n for r in registries for n in r.names())
            hint = closest(name, everything)
            err.print(f"nothing is registered as {name!r}" + (f" (did you mean {hint!r}?)" if hint else "")
                      + f"; registered: {', '.join(everything)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
        for registry in found:
            _document(registry.kind, registry.get(name))
        return
    for title, registry in (("verifiers", VERIFIERS), ("filters", FILTERS), ("prompt sources", PROMPT_SOURCES)):
        t = Table(title=title, show_lines=True)
        t.add_column("name", style="bold")
        t.add_column("what it does")
        t.add_column("recipe example")
        for entry in registry:
            # Text, not markup: a YAML example's [a, b] list must not be read as a style tag.
            t.add_row(entry.name, Text(entry.summary), Text(entry.example))
        if not registry.names():
            t.add_row("-", "none registered yet", "")
        console.print(t)
    t = Table(title="teachers")
    for col in ("id", "model", "licence", "params (B)", "TP x PP"):
        t.add_column(col, no_wrap=col == "id")
    for tid in catalog():
        teacher = load_teacher(tid)
        t.add_row(tid, teacher.model, teacher.licence, f"{teacher.params_b:g}",
                  f"{teacher.serving.tensor_parallel_size} x {teacher.serving.pipeline_parallel_size}")
    console.print(t)


def _document(kind: str, entry) -> None:
    """One component's documentation: its module's docstring, its parameters with defaults, an example."""
    import sys
    import typing

    console.print(f"[bold]{entry.name}[/bold] ({kind}): {entry.summary}", highlight=False, soft_wrap=True)
    doc = sys.modules[entry.fn.__module__].__doc__ or ""
    console.print(Text(doc.strip()), soft_wrap=True)  # its own line breaks, not the terminal's
    t = Table(title="parameters")
    for col in ("key", "type", "default"):
        t.add_column(col)
    for key, field in entry.params.model_fields.items():
        default = "required" if field.is_required() else repr(field.get_default(call_default_factory=True))
        kind_name = str(field.annotation).replace("typing.", "")
        if typing.get_origin(field.annotation) is typing.Literal:
            kind_name = " | ".join(map(str, typing.get_args(field.annotation)))
        elif isinstance(field.annotation, type):
            kind_name = field.annotation.__name__
        t.add_row(key, Text(kind_name), Text(default))
    console.print(t)
    if entry.example:
        console.print("example:")
        console.print(Text(entry.example), soft_wrap=True)


if __name__ == "__main__":
    app()
