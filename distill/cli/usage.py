"""`distill usage import | clusters | plan | convert | serve-config | demo-logs`: agent usage logs into a log store
(redacted before anything is written), the recurring tasks in it, a recipe for each worth
converting, the conversion itself (baselines, fine-tunes, a gate, a report), and a seeded agent's
logs to try them on."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distill.cli.app import app, console, err
from distill.cli.progress import LogBar, RichBar

usage_app = typer.Typer(no_args_is_help=True, help="Agent usage logs: import them into a log store (redacted), "
                                                    "cluster them into tasks, plan a recipe per task, convert the "
                                                    "tasks to small models.")
app.add_typer(usage_app, name="usage")


def _format_help() -> str:
    from distill.usage.formats import AUTO, FORMATS

    return f"{AUTO} (found from each file's first record), or one of: " + "; ".join(
        f"{name}: {m.DESCRIPTION}" for name, m in FORMATS.items())


@usage_app.command("import")
def import_command(
    files: List[str] = typer.Argument(..., metavar="FILE...", help="log files (.gz and other compressions read by suffix)"),
    to: str = typer.Option(..., "--to", metavar="STORE", help="the log store: a folder or a bucket URI (s3://, gs://); "
                                                               "made if new"),
    format: str = typer.Option("auto", "--format", help=_format_help()),
):
    """Import logged model calls: secrets and personal data redacted first, failed calls and
    duplicates marked; calls already in the store are not added again."""
    from distill.usage import FORMATS, LogFileError, StoreError, import_logs

    if format != "auto" and format not in FORMATS:
        err.print(f"--format: unknown format {format!r}; formats: auto, {', '.join(FORMATS)}", highlight=False)
        raise typer.Exit(2)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn()]
    try:
        if console.is_terminal:
            with Progress(*columns, console=console, transient=False) as progress:
                summary = import_logs(files, to, format, progress=lambda label: RichBar(progress, label))
        else:  # a file or a job log: bars would never be drawn
            summary = import_logs(files, to, format, progress=LogBar)
    except (LogFileError, StoreError) as e:
        err.print(f"{e}", markup=False, highlight=False, soft_wrap=True)
        err.print("nothing was imported", highlight=False)
        raise typer.Exit(2)
    for line in summary.malformed_lines():
        err.print(line, markup=False, highlight=False, soft_wrap=True)
    console.print(summary.paragraph(), markup=False, highlight=False, soft_wrap=True)


@usage_app.command("clusters")
def clusters_command(
    store: str = typer.Argument(..., metavar="STORE", help="a log store (distill usage import ... --to STORE)"),
    key: str = typer.Option("workload_id", "--key", help="the tag calls are grouped by: workload_id, client_id, model, "
                            "response_model, request_params.PATH (e.g. request_params.metadata.task), or none"),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="automatic clusters to make (default: chosen by silhouette)"),
    as_json: bool = typer.Option(False, "--json", help="print the report as JSON instead of a table"),
    prices: Optional[str] = typer.Option(None, "--prices", metavar="FILE", help="a price table (USD per million input "
                                         "and output tokens per model) instead of the shipped one"),
):
    """The recurring tasks of the store's calls: tagged calls by their tag, the rest clustered by
    system prompt, tools, user turn and answer shape. The report is written into the store."""
    from distill.usage.clusters import ClusterError, cluster_store
    from distill.usage.prices import PriceError
    from distill.usage.store import ASSIGNMENTS_FILE, CLUSTERS_FILE, StoreError

    try:
        report = cluster_store(store, None if key == "none" else key, k, prices).report
    except (StoreError, ClusterError, PriceError) as e:
        err.print(f"{e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(report, indent=2, ensure_ascii=False))
        return
    from rich.console import Console

    # Off a terminal (a file, a job log) the table gets room rather than the default 80 columns.
    (console if console.is_terminal else Console(width=160)).print(_clusters_table(report))
    console.print(_clusters_paragraph(report) + f" Written into {store} ({CLUSTERS_FILE}, {ASSIGNMENTS_FILE}).",
                  markup=False, highlight=False, soft_wrap=True)


def _money(usd: float | None) -> str:
    return "unknown" if usd is None else f"${usd:,.2f}" if usd >= 0.1 else f"${usd:.4f}"


def _clusters_table(report: dict):
    from rich.table import Table

    table = Table(show_lines=True)
    for column in ("cluster", "task", "calls", "tokens", "tools", "model", "cost", "example"):
        table.add_column(column, overflow="fold", max_width=60 if column == "example" else None)
    for c in report["clusters"]:
        tools = list(c["tools_called"]) or c["tools_offered"]
        calls = f"{c['calls']} ({c['share_of_calls']:.0%})" + (f"\n{c['adopted']} untagged joined" if c["adopted"] else "")
        example = c["examples"][0] if c["examples"] else ""
        table.add_row(
            c["id"] + ("" if c["label"] == c["id"] else f"\n{c['label']}"), c["task_type"], calls,
            "-" if c["share_of_tokens"] is None else f"{c['share_of_tokens']:.0%}",
            "\n".join(tools[:3] + ([f"+{len(tools) - 3} more"] if len(tools) > 3 else [])),
            "\n".join(m["model"] for m in c["models"]),
            "\n".join(_money(m["cost_usd"]) + ("" if m["priced_as"] else " (no price)") for m in c["models"]),
            example[:100] + ("…" if len(example) > 100 else ""))
    return table


def _clusters_paragraph(report: dict) -> str:
    auto = report["automatic"]
    text = f"{report['calls']} calls in {len(report['clusters'])} clusters: "
    text += (f"{report['tagged']} tagged by {report['key']}, " if report["key"] else "tags ignored, ")
    text += f"{report['untagged']} untagged"
    text += f" ({report['adopted']} of them joined a tagged workload). " if report["adopted"] else ". "
    if auto:
        how = (f"chosen by silhouette ({auto['silhouette']:.2f}) over {auto['k_range'][0]}..{auto['k_range'][1]}"
               if auto["chosen_by"] == "silhouette" and auto["silhouette"] is not None else
               "no split scored well: one task" if auto["chosen_by"] == "silhouette" else "fixed by --k")
        text += f"Automatic clustering of all calls: {auto['clusters']} clusters, {how}. "
    unknown = sorted({m for c in report["clusters"] for m in c["cost_unknown_for"]})
    known = sum(c["cost_usd"] or 0 for c in report["clusters"])
    text += f"Cost of the logged calls: {_money(report['cost_usd'])}" if report["cost_usd"] is not None else \
        f"Cost: {_money(known)} for the priced models; unknown for {', '.join(unknown)} (not in {report['prices']})"
    return text + "."


# The options `plan` and `convert` share: how a cluster's calls become a recipe.
PLAN_OPTIONS = dict(
    min_calls=typer.Option(50, "--min-calls", help="usable calls (answered, not failed, not duplicates) a cluster needs"),
    heldout=typer.Option(0.1, "--heldout", help="share of each cluster's calls held out for evaluation"),
    split=typer.Option("time", "--split", help="time: the latest calls are held out; random: a seeded sample"),
    seed=typer.Option(0, "--seed", help="the seed of random splits and of capped samples"),
    targets=typer.Option("logged", "--targets", help="logged: the student learns the logged answers (replayed); "
                         "teacher: --teacher relabels the calls, kept where they agree with the logged answers"),
    teacher=typer.Option("smollm2-135m-instruct", "--teacher", metavar="ID", help="the teacher entry that relabels "
                         "the logged requests (--targets teacher); also the judge of last resort"),
    student=typer.Option(None, "--student", metavar="ID", help="the student base (default: the first shipped base "
                         "that fits the task)"),
    judge=typer.Option(None, "--judge", metavar="ID", help="the judge's teacher entry for text answers (default: "
                       "the logged model's entry, else the teacher)"),
    logged_licence=typer.Option([], "--logged-licence", metavar="[MODEL=]LICENCE", help="the licence of a logged "
                                "model's outputs (MODEL may be a pattern), or of every model the shipped table "
                                "does not know"),
    key=typer.Option("workload_id", "--key", help="the tag a clustering groups by, when the store has none"),
    max_train=typer.Option(None, "--max-train", metavar="N", help="at most N training calls per cluster (a seeded "
                           "sample keeping each tool's or label's share); default: all"),
    max_heldout=typer.Option(None, "--max-heldout", metavar="N", help="at most N held-out calls per cluster; "
                             "default: all"),
    max_train_tokens=typer.Option(None, "--max-train-tokens", metavar="N", help="at most about N tokens of training "
                                  "calls per cluster (estimated from their length; long tool schemas make few calls)"),
)


def plan_settings(min_calls, heldout, split, seed, targets, teacher, student, judge, logged_licence, key, max_train,
                  max_heldout, max_train_tokens):
    from distill.usage.plan import Settings

    return Settings(min_calls=min_calls, heldout=heldout, split=split, seed=seed, targets=targets, teacher=teacher,
                    student=student, judge=judge, logged_licence=list(logged_licence),
                    key=None if key == "none" else key, max_train=max_train, max_heldout=max_heldout,
                    max_train_tokens=max_train_tokens)


@usage_app.command("plan")
def plan_command(
    store: str = typer.Argument(..., metavar="STORE", help="a log store (distill usage import ... --to STORE)"),
    out: Path = typer.Option(..., "--out", metavar="DIR", help="where the recipes, their prompt files and plan.json go"),
    min_calls: int = PLAN_OPTIONS["min_calls"],
    heldout: float = PLAN_OPTIONS["heldout"],
    split: str = PLAN_OPTIONS["split"],
    seed: int = PLAN_OPTIONS["seed"],
    targets: str = PLAN_OPTIONS["targets"],
    teacher: str = PLAN_OPTIONS["teacher"],
    student: Optional[str] = PLAN_OPTIONS["student"],
    judge: Optional[str] = PLAN_OPTIONS["judge"],
    logged_licence: List[str] = PLAN_OPTIONS["logged_licence"],
    key: str = PLAN_OPTIONS["key"],
    max_train: Optional[int] = PLAN_OPTIONS["max_train"],
    max_heldout: Optional[int] = PLAN_OPTIONS["max_heldout"],
    max_train_tokens: Optional[int] = PLAN_OPTIONS["max_train_tokens"],
    as_json: bool = typer.Option(False, "--json", help="print plan.json instead of a table"),
):
    """Which task clusters are worth a small model, and a runnable recipe for each one that is:
    the cluster's calls as prompt files (train and held-out), the logged answers as the targets
    (or a teacher that relabels them), the verifier against the logged answers, a student base;
    licences checked as `distill licence` does. Every cluster's decision and why go to DIR/plan.json."""
    from distill.usage.clusters import ClusterError
    from distill.usage.plan import PlanError, plan_store
    from distill.usage.store import StoreError

    settings = plan_settings(min_calls, heldout, split, seed, targets, teacher, student, judge, logged_licence, key,
                             max_train, max_heldout, max_train_tokens)
    try:
        plan = plan_store(store, out, settings)
    except (StoreError, PlanError, ClusterError) as e:
        err.print(f"{e}", markup=False, highlight=False, soft_wrap=True)
        err.print("no plan was written", highlight=False)
        raise typer.Exit(2)
    if as_json:
        typer.echo(json.dumps(plan, indent=2, ensure_ascii=False))
        return
    from rich.console import Console

    (console if console.is_terminal else Console(width=160)).print(_plan_table(plan))
    chosen = [c for c in plan["clusters"] if c["chosen"]]
    console.print(f"{len(chosen)} of {len(plan['clusters'])} clusters chosen"
                  + (" (clustered now)" if plan["clustered_now"] else "") + f"; the plan is in {out / 'plan.json'}. "
                  + ("Next: " + "; ".join(f"distill run {out / c['recipe']}" for c in chosen) if chosen else
                     "Nothing to convert: see why above."), markup=False, highlight=False, soft_wrap=True)


def _plan_table(plan: dict):
    from rich.table import Table

    table = Table(show_lines=True)
    for column in ("cluster", "task", "calls", "logged model", "decision", "why / what was written"):
        table.add_column(column, overflow="fold", max_width=70 if column.startswith("why") else None)
    for c in plan["clusters"]:
        models = "\n".join(f"{m['model']}: {m['licence'] or 'unknown'}" for m in c["logged_models"])
        if c["chosen"]:
            why = (f"{c['recipe']}\n{c['train']} train, {c['heldout']} held out ({c['split']}); {c['verifier']}; "
                   f"student {c['student']}; licence {c['licence']['verdict']}")
        else:
            why = "\n".join(c["reasons"])
        why += "".join(f"\n{n}" for n in c["notes"])
        table.add_row(c["id"], c["task_type"], f"{c['calls']} ({c['usable']} usable)", models,
                      "chosen" if c["chosen"] else "skipped", why)
    return table


@usage_app.command("convert")
def convert_command(
    store: str = typer.Argument(..., metavar="STORE", help="a log store (distill usage import ... --to STORE)"),
    out: Path = typer.Option(Path("conversion"), "--out", metavar="DIR", help="the plan's folder: recipes, prompt "
                             "files, runs/, convert.json, report.html; an earlier conversion's folder is updated"),
    min_calls: int = PLAN_OPTIONS["min_calls"],
    heldout: float = PLAN_OPTIONS["heldout"],
    split: str = PLAN_OPTIONS["split"],
    seed: int = PLAN_OPTIONS["seed"],
    targets: str = PLAN_OPTIONS["targets"],
    teacher: str = PLAN_OPTIONS["teacher"],
    student: Optional[str] = PLAN_OPTIONS["student"],
    judge: Optional[str] = PLAN_OPTIONS["judge"],
    logged_licence: List[str] = PLAN_OPTIONS["logged_licence"],
    key: str = PLAN_OPTIONS["key"],
    max_train: Optional[int] = PLAN_OPTIONS["max_train"],
    max_heldout: Optional[int] = PLAN_OPTIONS["max_heldout"],
    max_train_tokens: Optional[int] = PLAN_OPTIONS["max_train_tokens"],
    min_relative: float = typer.Option(0.9, "--min-relative", help="the gate: accuracy relative to the logged "
                                       "model's a small model must reach"),
    max_format_errors: float = typer.Option(0.05, "--max-format-errors", help="the gate: share of answers that may "
                                            "not parse (a malformed call, no JSON, an unknown label)"),
    shots: int = typer.Option(3, "--shots", help="training calls shown as examples in the few-shot baseline (0: none)"),
    baselines: bool = typer.Option(True, "--baselines/--no-baselines", help="try the bases as they are first"),
    min_train: int = typer.Option(8, "--min-train", metavar="N", help="training calls (after the caps) a fine-tune "
                                  "needs; a cluster with fewer stays with the logged model"),
    hardware: str = typer.Option("2-core CPU", "--hardware", help="what the small models' serving is priced as"),
    hardware_usd_per_hour: float = typer.Option(0.10, "--hardware-usd-per-hour", help="that hardware's price an hour"),
    prices: Optional[Path] = typer.Option(None, "--prices", metavar="FILE", help="the logged models' price table "
                                          "(default: the shipped one)"),
):
    """Carry out the plan: per cluster, the candidate bases zero-shot and few-shot on the held-out
    calls, the fine-tune where none suffices, the student against the logged model with the same
    verifier, and a promotion decision with its reasons (convert.json, the student's card). Writes
    the conversion report (DIR/report.html, DIR/report.json). Run it again after importing new
    logs: clusters keep their ids and only changed clusters are redone."""
    from distill.pipeline import LicenceRefused
    from distill.problems import RecipeError
    from distill.usage.clusters import ClusterError
    from distill.usage.convert import ConvertError, Gate, convert_store
    from distill.usage.convert_report import summary_lines
    from distill.usage.plan import PlanError
    from distill.usage.prices import PriceError
    from distill.usage.store import StoreError

    settings = plan_settings(min_calls, heldout, split, seed, targets, teacher, student, judge, logged_licence, key,
                             max_train, max_heldout, max_train_tokens)
    gate = Gate(min_relative=min_relative, max_format_errors=max_format_errors, shots=shots, baselines=baselines,
                min_train=min_train, hardware=hardware, hardware_usd_per_hour=hardware_usd_per_hour, prices=str(prices) if prices else None)

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)

    try:
        result = convert_store(store, out, settings, gate, say=say, progress_factory=LogBar)
    except (StoreError, PlanError, ClusterError, ConvertError, PriceError, RecipeError, LicenceRefused) as e:
        err.print(f"{e}", markup=False, highlight=False, soft_wrap=True)
        err.print("the conversion stopped; what it finished is kept and a rerun goes on from there", highlight=False)
        raise typer.Exit(2)
    for line in summary_lines(result):
        say(line)
    say(f"Report: {out / 'report.html'} (and report.json); decisions: {out / 'convert.json'}; "
        f"{result['minutes']:.1f} minutes.")
    if result["failed"]:
        err.print(f"failed: {', '.join(result['failed'])}; rerun the same command to resume them", highlight=False)
        raise typer.Exit(1)


@usage_app.command("serve-config")
def serve_config_command(
    conversion: Path = typer.Argument(..., metavar="DIR", help="a conversion's folder (distill usage convert --out DIR)"),
    fallback_url: str = typer.Option(..., "--fallback-url", metavar="URL", help="the large model's OpenAI-compatible "
                                     "API, e.g. https://api.openai.com/v1"),
    fallback_model: str = typer.Option(..., "--fallback-model", metavar="MODEL", help="the large model's name there"),
    fallback_key_env: Optional[str] = typer.Option(None, "--fallback-key-env", metavar="VAR", help="the environment "
                                                   "variable holding its API key (never written anywhere)"),
    out: Optional[Path] = typer.Option(None, "--out", metavar="FILE", help="the config to write (default: DIR/serve.yaml)"),
):
    """Write what `distill serve` needs from a conversion: the request classifier learnt from the
    store's clusters (DIR/classifier.json) and a serving config with a cascade student for every
    promoted cluster, the others left to the fallback."""
    from distill.serve.config import write_starting_config
    from distill.usage.classifier import ClassifierError, RequestClassifier
    from distill.usage.store import StoreError

    result_path, out = conversion / "convert.json", out or conversion / "serve.yaml"
    try:
        store = json.loads(result_path.read_text())["store"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        err.print(f"{result_path}: no conversion's result to read ({e}); run `distill usage convert STORE --out "
                  f"{conversion}` first", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    try:
        classifier = RequestClassifier.fit(store)
        classifier.save(conversion / "classifier.json")
        where = os.path.relpath((conversion / "classifier.json").resolve(), out.resolve().parent)  # as the config reads it
        notes = write_starting_config(result_path, out, where,
                                      {"base_url": fallback_url, "model": fallback_model, "api_key_env": fallback_key_env})
    except (StoreError, ClassifierError, ValueError) as e:
        err.print(f"{e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    for note in notes:
        console.print(note, markup=False, highlight=False, soft_wrap=True)
    console.print(f"classifier: {conversion / 'classifier.json'}; config: {out}; start it with: distill serve {out}",
                  markup=False, highlight=False, soft_wrap=True)


@usage_app.command("demo-logs")
def demo_logs_command(
    out: Path = typer.Argument(..., metavar="OUT.jsonl", help="where to write the log"),
    calls: int = typer.Option(3000, "--calls", min=1, help="log records to write"),
    seed: int = typer.Option(0, "--seed"),
    untagged: float = typer.Option(0.3, "--untagged", min=0.0, max=1.0, help="share of calls without workload_id"),
):
    """Write a seeded agent's logs (chat-completions JSONL): several workloads (tool routing,
    extraction, classification, summaries), planted personal data, failures, retries and
    duplicates. The true workload of every line goes to OUT.workloads.json, which the import
    does not read."""
    from distill.usage.synthetic import sidecar_path, write_demo_logs

    try:
        log = write_demo_logs(out, calls, seed, untagged)
    except OSError as e:
        err.print(f"{out}: cannot be written ({e}); give a path in a folder you can write to", markup=False,
                  highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    counts = Counter(log.workloads)
    bare = sum("workload_id" not in r for r in log.records)
    console.print(
        f"Wrote {len(log.records)} calls of {len(counts)} workloads ("
        + ", ".join(f"{w}: {log.kinds[w]}, {n}" for w, n in counts.most_common())
        + f") to {out}; {bare} without workload_id. The true workload of every line is in {sidecar_path(out)} "
        f"(the import does not read it). Next: distill usage import {out} --to STORE; distill usage clusters STORE.",
        markup=False, highlight=False, soft_wrap=True)
