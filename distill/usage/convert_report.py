"""report.html and report.json of `distill usage convert`: which of the agent's tasks small models
now take, how close they come to the LLM, and what that saves.

One self-contained page (inline CSS, plots as inline SVG), so it works offline and can be attached
to a ticket. An unknown number is shown as "unknown", never as 0: a missing price is not free.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from distill import storage
from distill.stages.report import _figure, _svg, _table


def _money(usd: float | None) -> str:
    """Dollars: cents from a dime up, else two significant digits (a small model's cost per call is tiny)."""
    if usd is None:
        return "unknown"
    sign, usd = ("-" if usd < 0 else ""), abs(usd)
    if usd >= 0.1 or usd == 0:
        return f"{sign}${usd:,.2f}"
    return f"{sign}${usd:.{1 - math.floor(math.log10(usd))}f}"


def _pct(share: float | None) -> str:
    return "unknown" if share is None else f"{share:.0%}"


def _number(value, spec: str = "") -> str:
    return "unknown" if value is None else format(value, spec)


def _when(iso: str | None) -> str:
    return "unknown" if not iso else iso[:16].replace("T", " ")


def _best(baselines: list[dict], few_shot: bool | None = None) -> dict | None:
    """The baseline closest to the LLM, among the zero-shot (False), few-shot (True) or all (None)."""
    known = [b for b in baselines if b.get("relative") is not None
             and (few_shot is None or bool(b.get("shots")) == few_shot)]
    return max(known, key=lambda b: b["relative"], default=None)


def _accuracy(c: dict) -> str:
    student, base = c.get("student"), _best(c.get("baselines") or [])
    parts = ["student " + (_pct(student.get("relative")) if student else "not trained")]
    parts.append(f"best baseline {_pct(base['relative'])} ({base['shots']}-shot)" if base else "no baseline")
    return "; ".join(parts)


def _format_errors(c: dict) -> str:
    student, base = c.get("student"), _best(c.get("baselines") or [])
    parts = [f"student {_pct(student.get('format_errors'))}"] if student else []
    parts += [f"baseline {_pct(base.get('format_errors'))}"] if base else []
    return "; ".join(parts) or "-"


def _change(c: dict) -> str:
    change = c.get("change") or {}
    status, prev = change.get("status") or "new", change.get("previous")
    text = status + (f", {change['new_calls']} new calls" if change.get("new_calls") and status != "new" else "")
    if prev:
        text += f"; was {prev.get('decision')} at {_pct(prev.get('relative'))} ({_when(prev.get('at'))})"
    return text


def _rows(result: dict) -> list[list[str]]:
    return [[c["id"] + ("" if c.get("label") in (None, c["id"]) else f" ({c['label']})"), c.get("task_type") or "-",
             f"{_number(c.get('calls'))} ({_pct(c.get('share_of_calls'))})",
             _number(c.get("calls_per_day"), ".1f"),
             c.get("decision"), c.get("model") or "-", _accuracy(c), _format_errors(c),
             f"{_money(c.get('llm_cost_per_day'))} -> {_money(c.get('cost_per_day_after'))}", _change(c)]
            for c in result["clusters"]]


def _reasons(result: dict) -> str:
    items = []
    for c in result["clusters"]:
        reasons = [f"the plan skipped it: {r}" for r in c.get("plan_reasons") or []] + list(c.get("reasons") or [])
        inner = "".join(f"<li>{html.escape(str(r))}</li>" for r in reasons) or "<li>no reason recorded</li>"
        items.append(f"<li><b>{html.escape(c['id'])}</b>: {html.escape(str(c.get('decision')))}<ul>{inner}</ul></li>")
    return f"<ul>{''.join(items)}</ul>"


def _ticks(ax, names: list[str]) -> None:
    crowded = len(names) > 4  # the figure is 6.4 inches wide: slant the ids rather than overlap them
    ax.set_xticks(range(len(names)), names, rotation=30 if crowded else 0, ha="right" if crowded else "center")


def plot_accuracy(result: dict) -> str | None:
    """Per cluster, accuracy relative to the LLM of the best zero-shot and few-shot baselines and the student."""
    series = {"best zero-shot baseline": [], "best few-shot baseline": [], "student": []}
    names = []
    for c in result["clusters"]:
        zero, few = _best(c.get("baselines") or [], False), _best(c.get("baselines") or [], True)
        values = [zero and zero["relative"], few and few["relative"], (c.get("student") or {}).get("relative")]
        if any(v is not None for v in values):
            names.append(c["id"])
            for label, v in zip(series, values):
                series[label].append(v)
    if not names:
        return None
    fig, ax = _figure()
    w = 0.27
    for i, (label, color) in enumerate(zip(series, ("#c9c9c9", "#7f7f7f", "#1f77b4"))):
        points = [(x + (i - 1) * w, v) for x, v in enumerate(series[label]) if v is not None]  # unknown: no bar
        if points:
            bars = ax.bar([p[0] for p in points], [p[1] for p in points], w, label=label, color=color)
            ax.bar_label(bars, labels=[f"{p[1]:.0%}" for p in points], fontsize=7)
    gate = (result.get("settings") or {}).get("min_relative")
    if gate is not None:
        ax.axhline(gate, color="#c0504d", linestyle="--", linewidth=1, label=f"gate ({gate:.0%})")
    _ticks(ax, names)
    top = max(v for s in series.values() for v in s if v is not None)
    ax.set_ylim(0, max(1.2, top + 0.15))  # a student may beat the LLM
    ax.set_ylabel("accuracy relative to the LLM")
    ax.set_title("Small models vs the LLM, per cluster")
    ax.legend(loc="upper left", fontsize=7)
    return _svg(fig)


def plot_costs(result: dict) -> str | None:
    """Per cluster, what the LLM cost per day against what the calls cost after the conversion."""
    clusters = [c for c in result["clusters"]
                if c.get("llm_cost_per_day") is not None or c.get("cost_per_day_after") is not None]
    if not clusters:
        return None
    fig, ax = _figure()
    w = 0.38
    for offset, key, label, color in ((-w / 2, "llm_cost_per_day", "LLM", "#7f7f7f"),
                                      (w / 2, "cost_per_day_after", "after", "#3a7d44")):
        points = [(x + offset, c[key]) for x, c in enumerate(clusters) if c.get(key) is not None]
        if points:
            bars = ax.bar([p[0] for p in points], [p[1] for p in points], w, label=label, color=color)
            ax.bar_label(bars, labels=[_money(p[1]) for p in points], fontsize=7)
    _ticks(ax, [c["id"] for c in clusters])
    ax.set_ylabel("US dollars per day")
    ax.set_title("Cost per day, before and after (no bar: unknown)")
    ax.legend()
    return _svg(fig)


def changes_html(result: dict) -> str | None:
    """What moved since the last conversion; None on a first conversion."""
    prev = result.get("previous")
    changed = [c for c in result["clusters"] if ((c.get("change") or {}).get("status") or "new") != "new"]
    if not prev and not changed:
        return None
    overall = result.get("overall") or {}
    text = ""
    if prev:
        text = (f"<p>Last conversion, {html.escape(_when(prev.get('at')))}: small models took "
                f"{_pct(prev.get('share_moved'))} of the calls, saving {_money(prev.get('saving_per_day'))} a day. "
                f"Now: {_pct(overall.get('share_moved'))}, saving {_money(overall.get('saving_per_day'))} a day.</p>")
    items = "".join(f"<li><b>{html.escape(c['id'])}</b>: {html.escape(_change(c))}</li>" for c in changed)
    return text + (f"<ul>{items}</ul>" if items else "<p>Every cluster is new since then.</p>")


def _summary(result: dict) -> str:
    o, window = result.get("overall") or {}, result.get("window") or {}
    share = o.get("saving_share")
    return (f"Small models now take {_pct(o.get('share_moved'))} of the agent's calls ({_number(o.get('calls_moved'))} "
            f"of {_number(o.get('calls'))}). Projected saving: {_money(o.get('saving_per_day'))} a day, "
            f"{_money(o.get('projected_saving_per_month'))} per 30-day month"
            + ("" if share is None else f" ({share:.0%} of the LLM's cost)")
            + f". The conversion took {_number(result.get('minutes'), '.1f')} minutes; the logged calls run from "
            f"{_when(window.get('first'))} to {_when(window.get('last'))} ({_number(window.get('days'), 'g')} days).")


def render_html(result: dict) -> str:
    """The whole page; everything taken from `result` is escaped."""
    settings = result.get("settings") or {}
    plots = [("Accuracy relative to the LLM", plot_accuracy(result),
              "Nothing to draw: no cluster has a measured baseline or student."),
             ("Cost per day", plot_costs(result),
              "Nothing to draw: every cost is unknown (no price for the models).")]
    body = "".join(f"<section><h2>{title}</h2>{svg or f'<p class=none>{none}</p>'}</section>"
                   for title, svg, none in plots)
    changes = changes_html(result)
    if changes:
        body += f"<section><h2>What changed since the last conversion</h2>{changes}</section>"
    rate = settings.get("hardware_usd_per_hour")
    costs = (f"<p>The LLM's cost comes from the price table {html.escape(str(result.get('prices') or 'unknown'))} "
             f"and the tokens logged with each call. A small model's cost is its measured seconds per call times "
             f"the price of the hardware, {html.escape(str(settings.get('hardware') or 'unknown'))} at "
             f"{_money(rate)}{'' if rate is None else ' an hour'}. A model with no price shows its cost as unknown, "
             f"and a total that includes it is unknown too.</p>")
    table = _table(["cluster", "task type", "calls", "calls/day", "decision", "model",
                    "accuracy vs LLM (student; best baseline)", "format errors", "cost/day before -> after",
                    "change since last"], _rows(result))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>distill usage convert: {html.escape(str(result.get('plan')))}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
section{{margin:1.5em 0}} svg{{max-width:100%;height:auto}} .none{{color:#888}} table{{border-collapse:collapse;font-size:14px}} td,th{{border:1px solid #ddd;padding:3px 8px;text-align:left}}</style>
</head><body>
<h1>Conversion of {html.escape(str(result.get('store')))}, {html.escape(_when(result.get('at')))}</h1>
<p>{html.escape(_summary(result))}</p>
{table}
<section><h2>Why each decision</h2>{_reasons(result)}</section>
{body}
<section><h2>How costs are computed</h2>{costs}</section>
</body></html>
"""


def write_report(result: dict, folder: Path) -> tuple[Path, Path]:
    """Writes report.json (the result as it is) and report.html into `folder`; returns both paths."""
    folder = Path(folder)
    json_path, html_path = folder / "report.json", folder / "report.html"
    storage.write_json(json_path, result)
    storage.write_text(html_path, render_html(result))
    return json_path, html_path


def summary_lines(result: dict) -> list[str]:
    """A few lines for the terminal: one per cluster, then the overall share moved and saving."""
    lines = []
    for c in result["clusters"]:
        student, base = c.get("student"), _best(c.get("baselines") or [])
        if c.get("decision") == "promote-base":  # the base takes the calls: its figure, not the student's
            student = None
        who, rel = (("student", student.get("relative")) if student else
                    (f"{base['shots']}-shot base", base["relative"]) if base else (None, None))
        accuracy = f"accuracy vs LLM {_pct(rel)} ({who})" if who else "accuracy vs LLM not measured"
        lines.append(f"{c['id']}: {c.get('decision')}, {c.get('model') or '-'}, {accuracy}, cost/day "
                     f"{_money(c.get('llm_cost_per_day'))} -> {_money(c.get('cost_per_day_after'))}")
    o = result.get("overall") or {}
    lines.append(f"Small models take {_pct(o.get('share_moved'))} of the calls ({_number(o.get('calls_moved'))} of "
                 f"{_number(o.get('calls'))}); projected saving {_money(o.get('saving_per_day'))} a day, "
                 f"{_money(o.get('projected_saving_per_month'))} per 30-day month"
                 + (f" (cost unknown for {', '.join(o['cost_unknown_for'])})." if o.get("cost_unknown_for") else "."))
    return lines
