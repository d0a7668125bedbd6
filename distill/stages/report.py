"""report.html: one page a person opens in a browser to see what a run did.

Plots are drawn with matplotlib as inline SVG, so the page is one self-contained file that
works offline and can be attached to a ticket.
"""

from __future__ import annotations

import html
import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from distill.run import RunDir
from distill.stages.sample import never_passed, round_stats

NAME = "report"
NEEDS_STUDENT = False


def run(ctx) -> dict:
    return {"report": str(build_report(ctx.run.dir))}


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prolog: the SVG sits inside HTML


def _figure():
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 3.4))


def plot_accept_rates(per_verifier: dict) -> str | None:
    if not per_verifier:
        return None
    fig, ax = _figure()
    names = list(per_verifier)
    rates, unknown = [], []
    for n in names:
        c = per_verifier[n]
        total = sum(c.values()) or 1
        rates.append(c.get("passed", 0) / total)
        unknown.append(c.get("cannot verify", 0) / total)
    ax.bar(names, rates, label="accepted", color="#3a7d44")
    ax.bar(names, unknown, bottom=rates, label="cannot verify", color="#c9c9c9")
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of samples")
    ax.set_title("Accept rate per verifier")
    ax.legend()
    return _svg(fig)


def plot_lengths(kept: list[int], rejected: list[int]) -> str | None:
    if not kept and not rejected:
        return None
    fig, ax = _figure()
    top = max(kept + rejected)
    bins = list(range(0, top + max(1, top // 30) + 1, max(1, top // 30)))
    ax.hist([rejected, kept], bins=bins, label=[f"rejected ({len(rejected)})", f"kept ({len(kept)})"],
            color=["#c0504d", "#3a7d44"], stacked=True)
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("samples")
    ax.set_title("Completion lengths, kept vs rejected")
    ax.legend()
    return _svg(fig)


def plot_loss(log: list[dict]) -> str | None:
    points = [(e["step"], e["loss"]) for e in log if "loss" in e]
    if not points:
        return None
    fig, ax = _figure()
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="." if len(points) < 50 else None)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss (completion tokens only)")
    return _svg(fig)


def plot_eval(ev: dict | None) -> str | None:
    if not ev:
        return None
    fig, ax = _figure()
    metrics = ["pass@1", "pass@k", "greedy_accuracy"]
    labels = ["pass@1", f"pass@{ev['k']}", "greedy"]
    x = range(len(metrics))
    w = 0.38
    for offset, role, color in ((-w / 2, "teacher", "#7f7f7f"), (w / 2, "student", "#1f77b4")):
        vals = [ev[role][m] for m in metrics]
        bars = ax.bar([i + offset for i in x], vals, w, label=f"{role}: {ev[role]['model']}", color=color)
        ax.bar_label(bars, labels=[f"{v:.0%}" for v in vals], fontsize=8)
    ax.set_xticks(list(x), labels)
    ax.set_ylim(0, 1.1)
    ax.set_title(f"Student vs teacher on {ev['held_out_prompts']} held-out prompts")
    ax.legend(loc="upper left")
    return _svg(fig)


def plot_rounds(rounds: list[dict]) -> str | None:
    if len(rounds) < 2:  # one round: the verifier plot says it all
        return None
    fig, ax = _figure()
    bars = ax.bar([f"round {r['round']}\n{r['samples']} samples" for r in rounds], [r["accept_rate"] for r in rounds],
                  color="#3a7d44")
    ax.bar_label(bars, labels=[f"{r['accept_rate']:.0%}" for r in rounds], fontsize=8)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accepted share")
    ax.set_title("Accept rate per sampling round (later rounds: prompts still short)")
    return _svg(fig)


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def groups_html(ev: dict | None) -> str | None:
    """Teacher and student per held-out source and category (BFCL's, a generator's)."""
    if not ev or not ev.get("groups"):
        return None
    rows = []
    for name, g in ev["groups"].items():
        t, st = g["teacher"], g["student"]
        rows.append([name, g["prompts"], f"{t['pass@1']:.1%}", f"{st['pass@1']:.1%}",
                     f"{st['pass@1'] - t['pass@1']:+.1%}", f"{t['greedy_accuracy']:.1%}",
                     f"{st['greedy_accuracy']:.1%}"])
    return _table(["held-out set", "prompts", "teacher pass@1", "student pass@1", "change", "teacher greedy",
                   "student greedy"], rows)


def probes_html(ev: dict | None) -> str | None:
    """Task score and every probe for teacher, base and student, the gate's decision, and what
    the probes skipped."""
    from distill.stages.card import comparison_rows, skipped_lines

    rows = comparison_rows(ev) if ev else []
    if not rows and not (ev or {}).get("gate"):
        return None
    out = _table(["", "teacher", "base", "student", "student - base"], rows) if rows else ""
    out += "".join(f"<p>{html.escape(x)}</p>" for x in skipped_lines(ev))
    if gate := ev.get("gate"):
        items = "".join(f"<li>{'pass' if c['passed'] else '<b>FAIL</b>'}: {html.escape(c['message'])}</li>"
                        for c in gate["conditions"])
        out += f"<p>Promotion gate: <b>{html.escape(gate['decision'])}</b></p><ul>{items}</ul>"
    return out


def filters_html(summary: dict | None) -> str | None:
    if not summary or not summary.get("filters"):
        return None
    rows = [[f["filter"], f["mode"], f["seen"], f["flagged"], f["dropped"], f["marked"], f["redacted"],
             ", ".join(f"{c}: {n}" for c, n in f["by_category"].items()) or "-"] for f in summary["filters"]]
    return (f"<p>{summary['candidates']} accepted samples went in, {summary['kept']} came out. Each filter saw what "
            "the ones above it kept; the last column counts flagged rows by kind (a benchmark, a PII kind, a "
            "safety category).</p>"
            + _table(["filter", "mode", "seen", "flagged", "dropped", "marked", "redacted", "flagged by kind"], rows))


def retries_html(attempts: list[dict]) -> str | None:
    """The sampling passes, when anything had to be redone: what failed and what was retried."""
    if not any(a["attempt"] or a["error"] or a["duplicates"] for a in attempts):
        return None
    rows = [[a["at"], a["round"], a["attempt"], a["requested"], a["answered"], a["duplicates"], a["error"] or "-"]
            for a in attempts]
    return ("<p>A pass that ended with requests unanswered was followed by one for what was missing; results "
            "that came twice (a batch redone by a replaced worker) were written once.</p>"
            + _table(["when", "round", "pass", "requested", "answered", "duplicates dropped", "error"], rows))


def replica_counts(attempts: list[dict]) -> dict[str, int]:
    """Results per engine replica (actor, process, node) over every sampling pass."""
    counts: dict[str, int] = {}
    for a in attempts:
        for name, k in (a.get("replicas") or {}).items():
            counts[name] = counts.get(name, 0) + k
    return counts


def replicas_html(attempts: list[dict]) -> str | None:
    """Which engine replicas sampled, and which were replaced mid-run (one actor, several processes)."""
    counts = {name: k for name, k in replica_counts(attempts).items() if name != "unknown"}
    if len(counts) < 2:  # a single engine process: nothing to tell
        return None
    processes: dict[str, list[str]] = {}
    for name in counts:
        actor = re.match(r"(actor \S+)", name)
        processes.setdefault(actor.group(1) if actor else name, []).append(name)
    replaced = sum(len(p) - 1 for p in processes.values())
    text = (f"<p>{len(processes)} engine replica{'s' if len(processes) > 1 else ''} "
            f"{'shared' if len(processes) > 1 else 'served'} the prompt stream"
            + (f"; {replaced} replica process{'es' if replaced > 1 else ''} died and Ray started "
               f"{'replacements' if replaced > 1 else 'a replacement'} (same actor, a new process), "
               "whose unfinished batches were redone" if replaced else "")
            + ". Results per engine process:</p>")
    return text + _table(["replica", "results"], [[name, counts[name]] for name in sorted(counts)])


def never_passed_html(files: RunDir, rounds: list[dict]) -> str | None:
    if len(rounds) < 2:
        return None
    ids = never_passed(accepted_by_prompt(files))
    if not ids:
        return "<p>Every prompt had an accepted sample.</p>"
    text = {p["prompt_id"]: p["question"] for p in files.read_prompts("train")}
    items = "".join(f"<li><code>{i}</code> {html.escape(text.get(i, '')[:160])}</li>" for i in ids[:50])
    more = f"<p>... and {len(ids) - 50} more (samples/*.parquet has them all).</p>" if len(ids) > 50 else ""
    return f"<p>{len(ids)} prompts never had an accepted sample, in any round:</p><ul>{items}</ul>{more}"


def completion_lengths(files: RunDir) -> tuple[list[int], list[int]]:
    """The completion tokens of the accepted samples, and of the rejected ones (not errors)."""
    kept, rejected = [], []
    for batch in files.iter_samples(["accepted", "completion_tokens", "error"]):
        accepted = pc.fill_null(batch["accepted"], False)
        no_error = pc.fill_null(pc.equal(batch["error"], ""), True)
        kept += batch["completion_tokens"].filter(accepted).to_pylist()
        rejected += batch["completion_tokens"].filter(pc.and_(pc.invert(accepted), no_error)).to_pylist()
    return kept, rejected


def accepted_by_prompt(files: RunDir) -> pa.Table:
    """(prompt_id, accepted): whether any sample of the prompt was accepted, one row per prompt
    (what never_passed needs, without a row per sample)."""
    accepted: dict[str, bool] = {}
    for batch in files.iter_samples(["prompt_id", "accepted"]):
        per = pa.Table.from_batches([batch]).group_by("prompt_id").aggregate([("accepted", "any")])
        for pid, ok in zip(per["prompt_id"].to_pylist(), per["accepted_any"].to_pylist()):
            accepted[pid] = accepted.get(pid, False) or bool(ok)
    return pa.table({"prompt_id": pa.array(list(accepted), pa.string()),
                     "accepted": pa.array(list(accepted.values()), pa.bool_())})


def build_report(run_dir: Path) -> Path:
    """Writes report.html from the files in the run directory; missing stages are said so."""
    files = RunDir(run_dir)
    run_dir = files.root
    manifest = files.read_json(files.manifest)
    train = files.read_json(files.train_summary)
    ev = files.read_json(files.metrics)
    resolved_file = files.resolved_recipe
    n = files.read_resolved()["recipe"]["sampling"]["n"] if resolved_file.is_file() else 1
    rounds = round_stats(files.read_samples(["sample_index", "accepted"]), n)  # two narrow columns
    samples = sum(r["samples"] for r in rounds)
    attempts = files.read_attempts()
    kept, rejected = completion_lengths(files)
    per_verifier = (manifest or {}).get("verifiers", {})

    sections = [
        ("Verifiers", plot_accept_rates(per_verifier), "no samples verified yet"),
        ("Sampling rounds", plot_rounds(rounds), None),
        ("Prompts that never passed", never_passed_html(files, rounds), None),
        ("Retried", retries_html(attempts), None),
        ("Replicas", replicas_html(attempts), None),
        ("Completion lengths", plot_lengths(kept, rejected), "no samples yet"),
        ("Filters", filters_html(files.read_json(files.filter_summary)), "no filter ran"),
        ("Training", plot_loss((train or {}).get("log", [])), "the train stage has not run"),
        ("Student vs teacher", plot_eval(ev), "the evaluate stage has not run"),
        ("By task", groups_html(ev), None),
        ("What changed from the base model", probes_html(ev), None),
    ]
    facts = []
    if samples:
        facts.append(f"{samples} samples, {len(kept)} accepted ({len(kept) / samples:.1%})")
    if manifest:
        facts.append(f"dataset: {manifest['rows']} rows, dropped: "
                     + (", ".join(f"{k} {v}" for k, v in manifest["dropped"].items()) or "none"))
        if manifest.get("bad_prompt_rows_skipped"):  # prompts.bad_rows: skip
            facts.append(f"prompt files: {manifest['bad_prompt_rows_skipped']} bad rows skipped")
    if train:
        facts.append(f"training: {train['steps']} steps, final loss {train['train_loss']:.4f}, "
                     f"{train['tokens_per_second']:.0f} tokens/s")
    if ev:
        facts.append(f"pass@1 teacher {ev['teacher']['pass@1']:.1%} vs student {ev['student']['pass@1']:.1%}")
        if ev.get("gate"):
            facts.append(f"gate: {ev['gate']['decision']}")
    resolved = resolved_file.read_text() if resolved_file.is_file() else ""
    body = "\n".join(
        f"<section><h2>{html.escape(title)}</h2>{svg if svg else f'<p class=none>{html.escape(none)}</p>'}</section>"
        for title, svg, none in sections if svg or none  # None: a section only some runs have
    )
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>distill report: {html.escape(run_dir.parent.name)} / {html.escape(run_dir.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:920px;margin:2em auto;padding:0 1em;color:#222}}
section{{margin:1.5em 0}} svg{{max-width:100%;height:auto}} .none{{color:#888}} table{{border-collapse:collapse;font-size:14px}} td,th{{border:1px solid #ddd;padding:3px 8px;text-align:left}} pre{{background:#f6f6f6;padding:1em;overflow:auto;font-size:12px}}</style>
</head><body>
<h1>distill run {html.escape(run_dir.parent.name)} / {html.escape(run_dir.name)}</h1>
<ul>{''.join(f'<li>{html.escape(f)}</li>' for f in facts)}</ul>
{body}
<details><summary>Resolved recipe</summary><pre>{html.escape(resolved)}</pre></details>
</body></html>
"""
    files.write_text(files.report, page)
    return files.report
