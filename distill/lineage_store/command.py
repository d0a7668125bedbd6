"""`distill lineage`: the command, and the table or JSON it prints query rows as."""

from __future__ import annotations

import json
import re

from distill.lineage_store.queries import ancestry, descendants
from distill.lineage_store.tables import default_url, open_store


def render_table(rows: list[dict], title: str | None = None):
    """A rich Table, indented by depth; hashes are shortened (JSON has them whole)."""
    from rich.table import Table as RichTable

    table = RichTable(title=title)
    for column in ("kind", "name", "version", "licence", "run", "relation", "via"):
        table.add_column(column, overflow="fold")
    for r in rows:
        version = r["version"] or ""
        short = version[:12] + "…" if re.fullmatch(r"[0-9a-f]{17,}", version) else version
        table.add_row("  " * r["depth"] + r["kind"], r["name"], short,
                      r["licence"] or "", r["run_id"] or "", " + ".join(filter(None, [r["relation"], *r.get("also", [])])), r["via"] or "")
    return table


def to_json(rows: list[dict]) -> str:
    return json.dumps(list(rows), indent=2, sort_keys=True, default=str)


def lineage_command(teacher: str | None = None, dataset: str | None = None, licence: str | None = None,
                    model: str | None = None, json_out: bool = False, store_url: str | None = None,
                    runs_dir: str = "runs") -> None:
    """`distill lineage`: what derives from a teacher, dataset or licence, or a model's ancestry.

    Exits 2 unless exactly one question is asked, 1 when nothing matches (the hint goes to stderr).
    """
    import typer
    from rich.console import Console

    err = Console(stderr=True)
    asked = {k: v for k, v in (("teacher", teacher), ("dataset", dataset), ("licence", licence), ("model", model)) if v}
    if len(asked) != 1:
        err.print("give exactly one of --teacher, --dataset, --licence, --model"
                  + (f" (got {', '.join('--' + k for k in asked)})" if asked else ""), style="bold red", highlight=False)
        raise typer.Exit(2)
    (kind, key), = asked.items()
    from sqlalchemy.exc import SQLAlchemyError

    try:
        store = open_store(store_url, runs_dir)
        rows = ancestry(store, key) if kind == "model" else descendants(store, kind, key)
    except SQLAlchemyError as e:  # not a database, a store of another shape, a server that is down
        from sqlalchemy.engine import make_url

        where = make_url(store_url or default_url(runs_dir)).render_as_string(hide_password=True)
        reason = " ".join(str(getattr(e, "orig", None) or e).split())[:200]
        err.print(f"the lineage store ({where}) cannot be read: {reason}. Point --store or DISTILL_LINEAGE_URL at "
                  "a lineage store, or move this one aside: the next `distill run` makes a new one, and "
                  "registers a finished run again when run once more", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    if json_out:
        typer.echo(to_json(rows))
    elif rows:
        what = f"ancestry of model {key}" if kind == "model" else f"what derives from {kind} {key}"
        Console().print(render_table(rows, title=what))
    if rows.hint:
        err.print(rows.hint, markup=False, highlight=False, soft_wrap=True)
    if not rows:
        raise typer.Exit(1)
