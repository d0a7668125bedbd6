"""Commands on a recipe or a run: validate, licence, run, card, report, lineage."""

from __future__ import annotations

from typing import Optional

import typer
import yaml
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from distill.cli.app import app, console, err
from distill.cli.progress import LogBar, RichBar


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
    from distill.pipeline import RunBusy, TeacherNotProbed

    try:
        if console.is_terminal:
            with Progress(*columns, console=console, transient=False) as progress:
                the_run, summaries = run_pipeline(r, until, progress_factory=lambda label: RichBar(progress, label),
                                                  verbose=verbose)
        else:  # a file or `ray job logs`: bars would never be drawn, so progress goes out as lines
            the_run, summaries = run_pipeline(r, until, progress_factory=LogBar, verbose=verbose)
    except RunBusy as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    except TeacherNotProbed as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    where = f"{the_run.remote} (local copy: {the_run.dir})" if the_run.remote else the_run.dir
    console.print(f"run directory: {where}", highlight=False, soft_wrap=True)
    _print_summary(summaries)


def _print_summary(summaries: dict) -> None:
    if p := summaries.get("prompts"):
        console.print(f"prompts: {p['train']} train, {p['eval']} eval held out"
                      + (f" ({p['train_overlapping_eval']} train prompts dropped: also in eval)" if p["train_overlapping_eval"] else "")
                      + (f"; {p['bad_rows_skipped']} bad rows skipped" if p.get("bad_rows_skipped") else ""))
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
        console.print(f"train: {t['method']}, {t.get('weights', 'full')} weights, {t['steps']} steps, "
                      f"loss {t['train_loss']:.4f}, {t['tokens_per_second']:.0f} tokens/s"
                      + (" (resumed from a checkpoint)" if t["resumed"] else ""))
    if e := summaries.get("evaluate"):
        _print_eval(e)
    for key in ("card", "report"):
        if x := summaries.get(key):
            console.print(f"{key}: {x[key]}", highlight=False, soft_wrap=True)


def _print_eval(e: dict) -> None:
    from distill.stages.card import cost_text

    t = Table(title=f"student vs teacher on {e['held_out_prompts']} held-out prompts (k={e['k']})")
    for col in ("model", "pass@1", f"pass@{e['k']}", "greedy", "mean tokens", "cost / correct"):
        t.add_column(col, justify="right")
    for role in ("teacher", "base", "student"):
        if role not in e:
            continue
        m = e[role]
        t.add_row(f"{role}: {m['model']}", f"{m['pass@1']:.1%}", f"{m['pass@k']:.1%}", f"{m['greedy_accuracy']:.1%}",
                  f"{m['mean_output_tokens']:.1f}", cost_text(m))
    console.print(t)
    if e.get("groups"):
        g = Table(title="by held-out set (pass@1; greedy)")
        for col in ("set", "prompts", "teacher", "student", "change"):
            g.add_column(col, justify="right")
        for name, x in e["groups"].items():
            te, st = x["teacher"], x["student"]
            g.add_row(name, str(x["prompts"]), f"{te['pass@1']:.1%}; {te['greedy_accuracy']:.1%}",
                      f"{st['pass@1']:.1%}; {st['greedy_accuracy']:.1%}", f"{st['pass@1'] - te['pass@1']:+.1%}")
        console.print(g)
    if e.get("probes"):
        from distill.cli.probe_tables import print_skipped, probes_table

        console.print(probes_table(e["probes"]))
        print_skipped(e["probes"])
    if e.get("gate"):
        from distill.stages.gate import summary_text

        console.print(summary_text(e["gate"]), markup=False, highlight=False, soft_wrap=True)


@app.command()
def card(run_dir: str = typer.Argument(..., help="a run directory: runs/<name>/<run id>")):
    """Rebuild the student's model card (student/README.md) and lineage.json from the run directory alone."""
    from distill.stages.card import write_card

    try:
        path = write_card(run_dir)
    except FileNotFoundError as e:
        err.print(str(e), markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    except UNREADABLE as e:
        _unreadable_run(run_dir, e)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


@app.command()
def report(run_dir: str = typer.Argument(..., help="a run directory: runs/<name>/<run id>")):
    """Redraw report.html from the run directory."""
    from distill.run import RunDir
    from distill.stages.report import build_report

    if not RunDir(run_dir).resolved_recipe.is_file():
        err.print(f"{run_dir}: not a distill run directory (no recipe.resolved.yaml)", markup=False, highlight=False)
        raise typer.Exit(2)
    try:
        path = build_report(run_dir)
    except UNREADABLE as e:
        _unreadable_run(run_dir, e)
    console.print(f"wrote {path}", highlight=False, soft_wrap=True)


# What a damaged run directory raises when its files are read: bad YAML or JSON, a truncated
# Parquet file, a file with the keys of another version.
UNREADABLE = (ValueError, KeyError, TypeError, OSError, yaml.YAMLError)


def _unreadable_run(run_dir: str, e: Exception):
    kind = "not valid YAML" if isinstance(e, yaml.YAMLError) else type(e).__name__
    reason = " ".join(str(e).split())[:200]
    err.print(f"{run_dir}: a file of the run directory cannot be read ({kind}: {reason}). Was it made by distill, "
              "and is it complete? Running its recipe again rewrites what is damaged", markup=False,
              highlight=False, soft_wrap=True)
    raise typer.Exit(2)


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
