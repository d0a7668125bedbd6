"""The Typer app and the two consoles every command prints to."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="A distillation and synthetic-data factory.")
console = Console()
err = Console(stderr=True)
