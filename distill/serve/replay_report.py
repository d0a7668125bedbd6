"""The replay's report: a few lines for the terminal, and replay.html (a table per cluster and the
calibration curves of distill.serve.replay's result)."""

from __future__ import annotations

import html

from distill.serve.curves import envelope

def _pct(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.0%}"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}" if x < 10 else f"{x:.0f}"


def _usd(x: float | None) -> str:
    return "unknown" if x is None else f"${x:.4f}" if x < 1 else f"${x:,.2f}"


def summary_lines(result: dict) -> list[str]:
    lines = []
    for name, s in [*result["clusters"].items(), ("overall", result["overall"])]:
        lines.append(f"{name}: {s['calls']} calls, accuracy vs LLM {_pct(s['relative'])}"
                     + (f" ({s['unverified']} not verifiable)" if s["unverified"] else "")
                     + f", students answered {_pct(s['student_share'])}, cost/1000 calls {_usd(s['cost_per_1000'])} "
                     f"(LLM only {_usd(s['llm_only_cost_per_1000'])}), router ms p50 {_ms(s['router_ms']['p50'])} "
                     f"p99 {_ms(s['router_ms']['p99'])}, call ms p50 {_ms(s['call_ms']['p50'])} "
                     f"p99 {_ms(s['call_ms']['p99'])}")
    for name, cal in result["calibration"].items():
        if not cal["calls"]:
            lines.append(f"calibration of {name}: no calls routed to it")
            continue
        cpts = ", ".join(f"CPT({k}) {_pct(v)}" for k, v in cal["cpt"].items())
        lines.append(f"calibration of {name} ({cal['calls']} calls): student alone {_pct(cal['student_only'])}, "
                     + (f"APGR {cal['apgr']:.3f}, {cpts}" if cal["apgr"] is not None else
                        "no gap to recover (the student matches the LLM)"))
        for target, pick in cal["targets"].items():
            lines.append(f"  {target}: " + (f"min_confidence {pick['threshold']:.3g} (LLM share "
                                            f"{_pct(pick['llm_share'])}, accuracy vs LLM {_pct(pick['relative'])}; "
                                            f"configured {cal['min_confidence']:g})"
                                            if pick["threshold"] is not None else pick["why"]))
    if result.get("classifier_note"):
        lines.append(f"note: {result['classifier_note']}")
    return lines


def plot_curves(result: dict) -> str | None:
    """Per student, the quality recovered against the share of calls sent to the LLM."""
    from distill.stages.report import _figure, _svg

    curves = {n: c for n, c in result["calibration"].items() if c["apgr"] is not None}
    if not curves:
        return None
    fig, ax = _figure()
    for name, cal in curves.items():
        pts = envelope([(p["llm_share"], p["recovered"]) for p in cal["points"] if p["recovered"] is not None])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                label=f"{name} (APGR {cal['apgr']:.2f})")
    ax.plot([0, 1], [0, 1], color="#c9c9c9", linestyle="--", linewidth=1, label="random routing")
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of calls sent to the LLM")
    ax.set_ylabel("performance gap recovered")
    ax.set_title("Calibration of min_confidence")
    ax.legend(loc="lower right", fontsize=7)
    return _svg(fig)


def render_html(result: dict) -> str:
    import html

    from distill.stages.report import _table

    rows = [[name, s["calls"], _pct(s["relative"]), _pct(s["student_share"]), _usd(s["cost_per_1000"]),
             _usd(s["llm_only_cost_per_1000"]), _ms(s["router_ms"]["p50"]), _ms(s["router_ms"]["p99"]),
             _ms(s["call_ms"]["p50"]), _ms(s["call_ms"]["p99"])]
            for name, s in [*result["clusters"].items(), ("overall", result["overall"])]]
    table = _table(["cluster", "calls", "accuracy vs LLM", "answered by students", "cost/1000 calls", "LLM only",
                    "router ms p50", "p99", "call ms p50", "p99"], rows)
    svg = plot_curves(result)
    lines = "".join(f"<li>{html.escape(line)}</li>" for line in summary_lines(result))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>distill serve-replay: {html.escape(result['conversion'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}
svg{{max-width:100%;height:auto}} table{{border-collapse:collapse;font-size:14px}} td,th{{border:1px solid #ddd;padding:3px 8px}}</style>
</head><body><h1>Replay of {html.escape(result['conversion'])}, {html.escape(result['at'])}</h1>
<p>Held-out logged calls sent through the router; the LLM is the logged model (accuracy 1.0 by definition).
Router ms: classification, routing and the check, without model time. Call ms: the whole call; {html.escape(result['llm_latency'])}.</p>
{table}<ul>{lines}</ul>{svg or '<p>No calibration curve: no student has a gap to recover.</p>'}
</body></html>
"""
