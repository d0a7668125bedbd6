"""`distill usage import`: agent usage logs into a log store, redacted before anything is written."""

from __future__ import annotations

from typing import List

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distill.cli.app import app, console, err
from distill.cli.progress import LogBar, RichBar

usage_app = typer.Typer(no_args_is_help=True, help="Agent usage logs: import them into a log store (redacted).")
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
