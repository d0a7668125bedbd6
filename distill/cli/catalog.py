"""`distill ls`: the registries and the teacher catalogue, or one component's documentation."""

from __future__ import annotations

from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from distill.cli.app import app, console, err


@app.command("ls")
def list_registered(name: Optional[str] = typer.Argument(None, help="a verifier, filter, prompt source or backend: show its full documentation")):
    """List registered verifiers, filters, prompt sources, backends and teachers ($DISTILL_TEACHERS adds
    directories of entries), from the registries; with a NAME, document that one."""
    from pydantic import ValidationError

    from distill.backends import BACKENDS
    from distill.filters import FILTERS
    from distill.probes import PROBES
    from distill.problems import problems_from
    from distill.prompts import PROMPT_SOURCES
    from distill.teachers import Teacher, catalog, load_teacher, origin
    from distill.verifiers import VERIFIERS

    registries = (VERIFIERS, FILTERS, PROMPT_SOURCES, PROBES, BACKENDS)
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
    for title, registry in (("verifiers", VERIFIERS), ("filters", FILTERS), ("prompt sources", PROMPT_SOURCES),
                            ("probes", PROBES), ("backends", BACKENDS)):
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
    try:
        entries = catalog()
    except ValueError as e:  # an id defined twice, or a $DISTILL_TEACHERS directory that is not one
        err.print(f"teachers: {e}", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2)
    t = Table(title="teachers")
    for col in ("id", "model", "licence", "params (B)", "TP x PP", "from"):
        t.add_column(col, no_wrap=col == "id")
    for tid, path in entries.items():
        try:
            teacher = load_teacher(tid)
        except ValueError as e:  # one broken user entry: shown in its row, the rest still listed
            why = (str(e).splitlines()[0] if not isinstance(e, ValidationError)
                   else "; ".join(p.render(path.name) for p in problems_from(e, Teacher)))
            t.add_row(tid, Text(f"invalid: {why}", style="red"), "", "", "", origin(path))
            continue
        size = "unknown" if teacher.params_b is None else f"{teacher.params_b:g}"  # a logged API model's is unknown
        t.add_row(tid, teacher.model, teacher.licence, size,
                  f"{teacher.serving.tensor_parallel_size} x {teacher.serving.pipeline_parallel_size}", origin(path))
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
