"""The probe table `distill run` and `distill probe-teacher` print."""

from __future__ import annotations

from rich.table import Table

from distill.cli.app import console


def probes_table(probes: dict, roles: tuple[str, ...] = ("teacher", "base", "student")) -> Table:
    """Each probe metric for the given models, with 95% intervals."""
    t = Table(title="probes (95% intervals in brackets)")
    for col in ("probe", "metric", "items", *roles):
        t.add_column(col, justify="right")
    for label, p in probes.items():
        if p.get("error"):
            t.add_row(label, "skipped", "0", *([p["error"][:60]] + ["-"] * (len(roles) - 1)))
            continue
        for metric, row in p["metrics"].items():
            cells = []
            for role in roles:
                m = row.get(role) or {}
                ci = m.get("ci95")
                cells.append("-" if m.get("value") is None else
                             f"{m['value']:.1%}" + (f" ({ci[0]:.0%}-{ci[1]:.0%})" if ci else ""))
            better = "higher" if row["better"] == "higher" else "lower"
            t.add_row(label, f"{metric} ({better} is better)", str(p["items"]), *cells)
    return t


def print_skipped(probes: dict) -> None:
    for label, p in probes.items():
        for reason, n in (p.get("skipped_reasons") or {}).items():
            console.print(f"{label}: {n} of {p['total']} items skipped: {reason}", markup=False, highlight=False,
                          soft_wrap=True)
