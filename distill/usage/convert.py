"""`distill usage convert`: a log store's plan carried out (issue 21, steps 5-7).

For every cluster the plan chose:

1. **Baselines.** Each candidate base that runs here answers the held-out calls as it is,
   zero-shot and with a few of the cluster's training calls as examples (`shots`), scored by the
   cluster's verifier against the logged answers. All clusters' requests to one base go to one
   engine. A base that already passes the gate takes the cluster: no fine-tune is needed.
2. **Fine-tune.** Otherwise the cluster's recipe runs (`distill run`: the logged answers replayed
   as the teacher's, the student trained on them and evaluated against them), its runs under
   PLAN/runs.
3. **Gate.** A candidate passes when its greedy accuracy relative to the logged model's (the same
   verifier on the logged answers) reaches `min_relative` and its format errors (answers that do
   not parse as the task's answer: a malformed call, no JSON object, a label never seen) stay
   within `max_format_errors`. The decision and its reasons go into convert.json and onto the
   student's model card.

Costs: the logged model's from the price table and the logged tokens; a small model's from its
measured seconds per answer (after its engine's first batch, in batch on this hardware) and a
hardware price per hour. Running convert again after new logs were imported re-plans (clusters
keep their ids), and redoes only the clusters whose prompt files or recipe changed (their
fingerprint); the others keep their results, and the report says which is which.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from distill import storage
from distill.lineage import code_version
from distill.usage.plan import PLAN_FILE, Settings, plan_store
from distill.usage.store import UsageStore

KIND = "distill usage convert"
RESULT_FILE = "convert.json"
RUNS = "runs"
CALL_COLUMNS = ["call_id", "timestamp", "model", "response_model", "prompt_tokens", "completion_tokens",
                "latency_ms", "status"]
CARD_MARK = "<!-- distill usage convert: decision -->"


class ConvertError(Exception):
    """A setting convert cannot use; the message says what to give instead."""


@dataclass
class Gate:
    min_relative: float = 0.9  # accuracy relative to the logged model's a small model must reach
    max_format_errors: float = 0.05  # share of answers that do not parse as the task's answer
    shots: int = 3  # training calls shown as examples in the few-shot baseline; 0: no few-shot baseline
    baselines: bool = True  # try the bases as they are before fine-tuning
    min_train: int = 8  # training calls (after the plan's caps) a fine-tune needs; fewer: the logged model keeps the cluster
    hardware: str = "2-core CPU"  # where the small models' seconds per answer are measured
    hardware_usd_per_hour: float = 0.10  # what that hardware costs an hour
    prices: str | None = None  # the logged models' price table; None: the shipped one


def check(gate: Gate) -> None:
    if not 0 < gate.min_relative <= 1.5:
        raise ConvertError(f"--min-relative {gate.min_relative}: give a share of the logged model's accuracy, e.g. 0.9")
    if not 0 <= gate.max_format_errors <= 1:
        raise ConvertError(f"--max-format-errors {gate.max_format_errors}: give a share between 0 and 1, e.g. 0.05")
    if gate.min_train < 1:
        raise ConvertError(f"--min-train {gate.min_train}: give 1 or more training calls")
    if gate.shots < 0:
        raise ConvertError(f"--shots {gate.shots}: give 0 (no few-shot baseline) or more")
    if gate.hardware_usd_per_hour < 0:
        raise ConvertError(f"--hardware-usd-per-hour {gate.hardware_usd_per_hour}: give a price of 0 or more")


# ---- what a cluster's calls cost the logged model ------------------------------------------

def window(calls: list[dict]) -> dict:
    """The logged period: first and last call, and its length in days (at least one)."""
    times = [c["timestamp"] for c in calls if c["timestamp"] is not None]
    if not times:
        return {"first": None, "last": None, "days": 1.0}
    first, last = min(times), max(times)
    return {"first": first.isoformat(), "last": last.isoformat(),
            "days": max(1.0, (last - first).total_seconds() / 86400)}


def llm_side(calls: list[dict], days: float, prices) -> dict:
    """Calls per day, the logged model's mean cost per call (None when a model has no price) and
    median latency (None when not logged) of one cluster's calls."""
    answered = [c for c in calls if c["status"] == "ok"] or calls
    costs = [prices.cost(c["model"] or c["response_model"], c["prompt_tokens"] or 0, c["completion_tokens"] or 0)
             for c in answered]
    per_call = None if not costs or any(x is None for x in costs) else sum(costs) / len(costs)
    latency = [c["latency_ms"] for c in answered if c["latency_ms"] is not None]
    per_day = len(calls) / days
    return {"calls_per_day": per_day, "llm_cost_per_call": per_call,
            "llm_cost_per_day": None if per_call is None else per_call * per_day,
            "llm_latency_ms": statistics.median(latency) if latency else None}


# ---- answers: format errors and scores ------------------------------------------------------

def format_error(task: str, text: str | None, labels: set[str]) -> bool:
    """Whether an answer does not parse as the task's answer: a malformed tool call, no JSON
    object where one is asked for, a label the logged model never gave. (A well-formed wrong
    answer is not a format error.)"""
    if text is None:
        return True
    if task == "tool call":
        from distill.verifiers.tool_call import CallError, parse_tool_calls

        try:
            parse_tool_calls(text)
        except CallError:
            return True
        return False
    if task == "extraction":
        from distill.verifiers.match import find_object

        return find_object(text) is None
    if task == "classification":
        from distill.verifiers.match import normalise

        return normalise(text) not in {normalise(label) for label in labels}
    return False


def score(task: str, rows: list[dict], labels: set[str]) -> dict:
    """accuracy and format errors of answers (dicts with `correct` and `completion`)."""
    n = len(rows)
    return {"answers": n, "accuracy": sum(bool(r["correct"]) for r in rows) / n if n else None,
            "format_errors": sum(format_error(task, r["completion"], labels) for r in rows) / n if n else None}


def relative(accuracy: float | None, llm: float | None) -> float | None:
    return None if accuracy is None or not llm else accuracy / llm


def passes(candidate: dict, gate: Gate) -> list[str]:
    """Why a candidate (baseline or student) fails the gate; empty when it passes."""
    why = []
    rel, fmt = candidate.get("relative"), candidate.get("format_errors")
    if rel is None or rel < gate.min_relative:
        why.append(f"accuracy {_pct(rel)} of the logged model's, below the {gate.min_relative:.0%} the gate asks")
    if fmt is None or fmt > gate.max_format_errors:
        why.append(f"format errors {_pct(fmt)} of answers, above the {gate.max_format_errors:.0%} allowed")
    return why


def _pct(x: float | None) -> str:
    return "unknown" if x is None else f"{x:.0%}"


# ---- the cluster's recipe, prompts and examples ---------------------------------------------

def fingerprint(folder: Path) -> str:
    """What a cluster's results depend on: its recipe, teacher entry and prompt files."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".jsonl")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def labels_of(folder: Path) -> set[str]:
    """The labels (text references) of a cluster's training calls."""
    return {r["reference"] for p in folder.glob("train*.jsonl") for r in _read_jsonl(p)
            if isinstance(r["reference"], str)}


def examples(folder: Path, shots: int, seed: int) -> list[dict]:
    """`shots` training calls with their logged answers as user/assistant turns (the system turn
    left to the call being asked): a seeded pick, one per tool or label first."""
    rows = [r for p in sorted(folder.glob("train*.jsonl")) for r in _read_jsonl(p)]
    rng = random.Random(seed)
    rng.shuffle(rows)
    picked, seen = [], set()
    for r in rows:  # one per category first, then any
        if len(picked) < shots and r.get("category") not in seen:
            picked.append(r)
            seen.add(r.get("category"))
    picked += [r for r in rows if r not in picked][: shots - len(picked)]
    turns = []
    for r in picked:
        turns += [m for m in r["messages"] if m["role"] not in ("system", "developer")] + [r["logged"]]
    return turns


def examples_file(plan_dir: Path, cluster: str, base: str, shots: int) -> Path:
    """Where the example turns of a few-shot baseline are kept: the cluster's plan folder."""
    return plan_dir / cluster / f"examples-{base}-{shots}shot.json"


def with_examples(messages: list[dict], shots: list[dict]) -> list[dict]:
    """The call's turns with the example turns after its system turn."""
    head = [m for m in messages[:1] if m["role"] in ("system", "developer")]
    return head + shots + messages[len(head):]


# ---- baselines: the bases as they are -------------------------------------------------------

def _serve(model, batch_size: int = 16):
    from distill import ray_runtime
    from distill.backends import BACKENDS, BackendOptions, backend_name

    ray_runtime.start_ray(None, False)
    return BACKENDS.get(backend_name(model)).fn(model, BackendOptions(batch_size=batch_size, quiet=True))


def baselines(todo: list[dict], plan_dir: Path, gate: Gate, say: Callable[[str], None], serve=_serve,
              progress_factory=None) -> None:
    """Each candidate base that runs here answers every todo cluster's held-out calls, zero-shot
    and few-shot, greedily: one engine per base for all clusters. Fills cluster["baselines"]."""
    from distill.hardware import has_cuda
    from distill.prompts import load_prompts
    from distill.recipe import load_recipe
    from distill.stages.requests import request, sampling_params
    from distill.stages.verify import accepted, model_verifiers, verify_batch
    from distill.teachers import load_teacher
    from distill.usage.catalogues import candidates

    by_base: dict[str, list[tuple[dict, object, list[dict], str, int]]] = {}
    for c in todo:
        c["baselines"] = []
        recipe = load_recipe(plan_dir / c["recipe"])
        if model_verifiers(recipe.verifiers):
            c["baseline_note"] = "no baselines: the verifier runs a model (a judge), which convert does not start for them"
            continue
        held = load_prompts(recipe.prompts.eval, "eval")
        bases = [b.id for b in candidates(c["task_type"]) if b.hardware == "cpu" or has_cuda()] or [recipe.student.base]
        for base in bases:
            for shots in sorted({0, gate.shots}):
                by_base.setdefault(base, []).append((c, recipe, held, base, shots))
    for base, jobs in by_base.items():
        model = load_teacher(base)
        work, meta = [], {}
        for c, recipe, held, _, shots in jobs:
            turns = examples(plan_dir / c["id"], shots, recipe.sampling.seed) if shots else []
            if turns:  # kept, so a base promoted few-shot is served with the examples it passed with
                storage.write_json(examples_file(plan_dir, c["id"], base, shots), turns)
            for p in held:
                params = {**sampling_params(recipe, recipe.sampling.seed), "temperature": 0.0, "top_p": 1.0,
                          "top_k": 0, "min_p": 0.0}
                row = request(recipe, p, f"{c['id']}|{shots}|{p['prompt_id']}", params)
                row["messages"] = with_examples(row["messages"], turns)
                work.append(row)
                meta[row["work_id"]] = (c, recipe, p, shots)
        # One engine per base: the template its tool clusters' students are served with (hermes for
        # SmolLM2), which writes a conversation without tools as the model's own does.
        templates = [r.student.template for _, r, _, b, _ in jobs if r.student.base == b and r.student.template]
        model = model.model_copy(update={"template": templates[0] if templates else model.template})
        say(f"baselines: {base} answers {len(work)} held-out calls of {len({id(j[0]) for j in jobs})} cluster(s), "
            f"zero-shot{' and ' + str(gate.shots) + '-shot' if gate.shots else ''}")
        bar = progress_factory(f"baselines of {base}") if progress_factory else None
        if bar:
            bar.start(total=len(work))
        from distill.stages.evaluate import generate_timed, seconds_per_answer

        results, timing = generate_timed(serve(model), work, bar)
        groups: dict[tuple[str, int], list[dict]] = {}
        for r in results:
            c, recipe, p, shots = meta[r["work_id"]]
            groups.setdefault((c["id"], shots), []).append({**r, "_c": c, "_recipe": recipe, "_p": p})
        for (cid, shots), rows in groups.items():
            c, recipe = rows[0]["_c"], rows[0]["_recipe"]
            verdicts = verify_batch(recipe.verifiers, [r["text"] for r in rows], [r["_p"]["reference"] for r in rows],
                                    questions=[r["_p"]["question"] for r in rows],
                                    finish_reasons=[r["finish_reason"] for r in rows],
                                    tools=[json.loads(r["_p"]["tools"]) if r["_p"].get("tools") else None for r in rows],
                                    time_limit=recipe.verification.time_limit_s)
            scored = [{"completion": r["text"], "correct": accepted(v, r["error"])} for r, v in zip(rows, verdicts)]
            s = score(c["task_type"], scored, labels_of(plan_dir / cid))
            c["baselines"].append({"model": base, "shots": shots, **s, "relative": relative(s["accuracy"], c["llm_accuracy"]),
                                   "seconds_per_call": seconds_per_answer(timing),
                                   **({"examples": str(examples_file(plan_dir, cid, base, shots))} if shots else {})})


# ---- the fine-tune --------------------------------------------------------------------------

def fine_tune(c: dict, plan_dir: Path, progress_factory=None) -> dict:
    """Runs the cluster's recipe (resuming what an earlier convert did) and reads the student's
    results: greedy accuracy relative to the logged answers, format errors, seconds per answer."""
    from distill.pipeline import run_pipeline
    from distill.recipe import load_recipe
    from distill.stages.evaluate import seconds_per_answer

    recipe = load_recipe(plan_dir / c["recipe"])
    recipe = recipe.model_copy(update={"output_dir": str(plan_dir / RUNS)})
    run, _ = run_pipeline(recipe, progress_factory=progress_factory)
    files = run.files
    metrics = files.read_json(files.metrics)
    answers = files.read_eval_answers("student").to_pylist()
    greedy = [r for r in answers if r["kind"] == "greedy"]
    s = score(c["task_type"], greedy, labels_of(plan_dir / c["id"]))
    timing = files.read_json(files.eval_dir / "student.timing.json") if (files.eval_dir / "student.timing.json").exists() else {}
    manifest = files.read_json(files.manifest) if files.manifest.exists() else {}
    return {"name": recipe.student.name, "base": recipe.student.base, "run_dir": str(run.dir),
            "card": str(files.model_card), "accuracy": s["accuracy"], "pass@1": metrics["student"]["pass@1"],
            "format_errors": s["format_errors"], "answers": s["answers"],
            "llm_accuracy": metrics["teacher"]["greedy_accuracy"],
            "seconds_per_call": seconds_per_answer(timing),
            "train_rows": manifest.get("rows")}


# ---- the decision ---------------------------------------------------------------------------

def decide(c: dict, gate: Gate) -> None:
    """Fills decision, model, reasons and the cost after conversion of a cluster."""
    per_hour = gate.hardware_usd_per_hour

    def cost(seconds):
        return None if seconds is None else seconds * per_hour / 3600

    reasons = []
    chosen = None
    passing = [b for b in c.get("baselines", []) if not passes(b, gate)]
    if passing:
        best = min(passing, key=lambda b: (b["shots"], -(b["relative"] or 0)))
        chosen = ("promote-base", f"{best['model']} ({best['shots']}-shot)" if best["shots"] else best["model"],
                  best.get("seconds_per_call"))
        reasons.append(f"{chosen[1]} as it is reaches {_pct(best['relative'])} of the logged model's accuracy with "
                       f"{_pct(best['format_errors'])} format errors: no fine-tune needed")
    elif c.get("student"):
        st = c["student"]
        failing = passes(st, gate)
        if not failing:
            chosen = ("promote-student", st["name"], st.get("seconds_per_call"))
            reasons.append(f"the student reaches {_pct(st['relative'])} of the logged model's accuracy "
                           f"({_pct(st['accuracy'])} against {_pct(c['llm_accuracy'])}) with {_pct(st['format_errors'])} format errors")
        else:
            reasons += [f"the student's {w}" for w in failing]
        best_base = max(c.get("baselines", []), key=lambda b: b["relative"] or 0, default=None)
        if best_base:
            reasons.append(f"best base as it is: {best_base['model']} {best_base['shots']}-shot, "
                           f"{_pct(best_base['relative'])} of the logged model's accuracy")
    if chosen and c["llm_cost_per_call"] is not None and cost(chosen[2]) is not None \
            and cost(chosen[2]) >= c["llm_cost_per_call"]:
        reasons.append(f"but it costs no less than the logged model ({cost(chosen[2]):.6f} against "
                       f"{c['llm_cost_per_call']:.6f} USD a call at {per_hour} USD an hour)")
        chosen = None
    if chosen:
        c["decision"], c["model"] = chosen[0], chosen[1]
        c["cost_per_call_after"] = cost(chosen[2])
        if chosen[2] is None:
            reasons.append("its cost is unknown: its seconds per answer were not measured")
        else:  # time per answer in batch (throughput), beside the logged model's latency per call
            logged = c.get("llm_latency_ms")
            reasons.append(f"{chosen[2]:.2f} s of its engine per answer on a {gate.hardware}, in batch"
                           + (f"; the logged model took {logged / 1000:.2f} s per call (median)" if logged else ""))
    else:
        c["decision"], c["model"] = "keep-llm", ", ".join(c["logged_models"])
        c["cost_per_call_after"] = c["llm_cost_per_call"]
        if c.get("no_fine_tune"):
            reasons.append(c["no_fine_tune"])
    c["reasons"] = reasons
    after = c["cost_per_call_after"]
    c["cost_per_day_after"] = None if after is None else after * c["calls_per_day"]
    c["saving_per_day"] = (None if c["cost_per_day_after"] is None or c["llm_cost_per_day"] is None
                           else c["llm_cost_per_day"] - c["cost_per_day_after"])


def overall(clusters: list[dict], all_calls: int, days: float) -> dict:
    """The agent's share of calls moved and the saving. Costs add up over the clusters whose cost
    is known before and after (`cost_unknown_for` lists the others): one model missing from the
    price table, or a small model whose time was not measured, does not hide the rest."""
    moved = sum(c["calls"] for c in clusters if c["decision"].startswith("promote"))

    def after(c):
        return c["cost_per_day_after"] if c["decision"].startswith("promote") else c["llm_cost_per_day"]

    known = [c for c in clusters if c["llm_cost_per_day"] is not None and after(c) is not None]
    before, later = sum(c["llm_cost_per_day"] for c in known), sum(after(c) for c in known)
    saving = before - later if known else None
    return {"calls": all_calls, "calls_moved": moved, "share_moved": moved / all_calls if all_calls else None,
            "llm_cost_per_day": before if known else None, "cost_per_day_after": later if known else None,
            "saving_per_day": saving, "saving_share": saving / before if known and before else None,
            "projected_saving_per_month": saving * 30 if saving is not None else None,
            "cost_unknown_for": [c["id"] for c in clusters if c not in known]}


def card_section(c: dict, result_at: str) -> str:
    lines = [CARD_MARK, "", "## Promotion decision (distill usage convert)", "",
             f"Cluster `{c['id']}` ({c['task_type']}, {c['calls']} logged calls, about {c['calls_per_day']:.0f} a day), "
             f"decided {result_at}: **{c['decision']}**; the calls go to {c['model']}.", ""]
    lines += [f"- {r}" for r in c["reasons"]]
    return "\n".join(lines) + "\n"


def write_card_decision(c: dict, at: str) -> None:
    """The decision as the last section of the student's model card (replacing an earlier one)."""
    path = Path(c["student"]["card"])
    if not path.exists():
        return
    text = path.read_text()
    text = text.split(CARD_MARK)[0].rstrip() + "\n\n"
    storage.write_text(path, text + card_section(c, at))


# ---- the whole conversion -------------------------------------------------------------------

def _previous(plan_dir: Path) -> dict | None:
    try:
        data = json.loads((plan_dir / RESULT_FILE).read_text())
        return data if data.get("kind") == KIND else None
    except (OSError, ValueError):
        return None


def _change(c: dict, before: dict | None, reused: bool) -> dict:
    if before is None:
        return {"status": "new", "new_calls": c["calls"], "previous": None}
    prev = {"decision": before.get("decision"), "relative": (before.get("student") or {}).get("relative"),
            "at": before.get("at")}
    if c["chosen_by_plan"]:  # redone (baselines, fine-tune) when its prompt files or recipe changed
        status = "unchanged" if reused else "retrained"
    else:
        status = "unchanged" if c["calls"] == before.get("calls") else "changed"
    return {"status": status, "new_calls": c["calls"] - before.get("calls", 0), "previous": prev}


def convert_store(uri: str, plan_dir: str | Path, settings: Settings | None = None, gate: Gate | None = None,
                  say: Callable[[str], None] = print, progress_factory=None, serve=_serve) -> dict:
    """Plans the store into `plan_dir` (again), then baselines, fine-tunes and gates every chosen
    cluster that changed; writes convert.json, report.html and report.json there; returns the result."""
    from distill.usage.convert_report import write_report
    from distill.usage.prices import load_prices

    gate = gate or Gate()
    check(gate)
    started = time.time()
    plan_dir = Path(plan_dir)
    previous = _previous(plan_dir)
    before = {c["id"]: c for c in (previous or {}).get("clusters", [])}
    prices = load_prices(gate.prices)
    say(f"planning {uri} into {plan_dir}")
    plan = plan_store(uri, plan_dir, settings)
    store = UsageStore.open(uri, existing=True)
    calls = store.read_calls(CALL_COLUMNS).to_pylist()
    assignments = store.read_assignments()
    span = window(calls)
    members: dict[str, list[dict]] = {}
    for call in calls:
        members.setdefault(assignments.get(call["call_id"]), []).append(call)
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    clusters = []
    for entry in plan["clusters"]:
        c = {"id": entry["id"], "label": entry["label"], "task_type": entry["task_type"], "calls": entry["calls"],
             "share_of_calls": entry["calls"] / len(calls), "chosen_by_plan": entry["chosen"],
             "plan_reasons": entry["reasons"], "logged_models": [m["model"] for m in entry["logged_models"]],
             **llm_side(members.get(entry["id"], []), span["days"], prices),
             "recipe": entry.get("recipe"), "baselines": [], "student": None, "llm_accuracy": 1.0}
        if c["chosen_by_plan"]:
            c["fingerprint"] = fingerprint(plan_dir / c["id"])
        clusters.append(c)
    todo = []
    for c in clusters:
        old = before.get(c["id"])
        reused = bool(c["chosen_by_plan"] and old and old.get("fingerprint") == c["fingerprint"]
                      and old.get("decision") not in (None, "failed"))
        c["change"] = _change(c, old, reused)
        if reused:
            for key in ("baselines", "student", "llm_accuracy", "baseline_note", "no_fine_tune"):
                if key in old:
                    c[key] = old[key]
        elif c["chosen_by_plan"]:
            todo.append(c)
    say(f"{len(todo)} cluster(s) to convert, {sum(c['change']['status'] == 'unchanged' for c in clusters)} unchanged "
        "since the last conversion")
    if todo and gate.baselines:
        baselines(todo, plan_dir, gate, say, serve, progress_factory)
    failed = []
    for c in todo:
        if any(not passes(b, gate) for b in c["baselines"]):
            say(f"{c['id']}: a base passes the gate as it is; no fine-tune")
            continue
        trained = sum(1 for p in sorted((plan_dir / c["id"]).glob("train*.jsonl")) for line in p.open() if line.strip())
        if trained < gate.min_train:
            c["no_fine_tune"] = (f"no fine-tune: {trained} training call(s) under the plan's caps, fewer than the "
                                 f"{gate.min_train} one needs (--min-train); raise --max-train or --max-train-tokens")
            say(f"{c['id']}: {c['no_fine_tune']}")
            continue
        say(f"{c['id']}: fine-tuning {c['recipe']}")
        try:
            st = fine_tune(c, plan_dir, progress_factory)
        except Exception as e:  # one cluster's failure must not lose the others' work
            failed.append(c["id"])
            c["decision"], c["model"], c["reasons"] = "failed", ", ".join(c["logged_models"]), [
                f"the fine-tune failed: {type(e).__name__}: {e}"]
            say(f"{c['id']}: the fine-tune failed ({type(e).__name__}: {e}); rerun convert to resume it")
            continue
        c["llm_accuracy"] = st.pop("llm_accuracy")
        st["relative"] = relative(st["accuracy"], c["llm_accuracy"])
        c["student"] = st
    for c in clusters:
        if c.get("decision") == "failed":
            c.update(cost_per_call_after=c["llm_cost_per_call"], cost_per_day_after=c["llm_cost_per_day"],
                     saving_per_day=0.0 if c["llm_cost_per_day"] is not None else None)
        elif c["chosen_by_plan"]:
            for b in c["baselines"]:
                b["relative"] = relative(b["accuracy"], c["llm_accuracy"])
            decide(c, gate)
            if c.get("student") and c["change"]["status"] != "unchanged":
                write_card_decision(c, at)
        else:
            c.update(decision="not-converted", model=", ".join(c["logged_models"]), reasons=[],
                     cost_per_call_after=c["llm_cost_per_call"], cost_per_day_after=c["llm_cost_per_day"],
                     saving_per_day=0.0 if c["llm_cost_per_day"] is not None else None)
    for c in clusters:
        if not c["chosen_by_plan"]:
            c.pop("recipe", None)
    result = {"kind": KIND, "version": 1, "at": at, "code_version": code_version(), "store": uri,
              "plan": str(plan_dir), "minutes": (time.time() - started) / 60,
              "settings": {**asdict(gate), "plan": asdict(settings or Settings())}, "prices": prices.source,
              "window": span, "clusters": clusters, "overall": overall(clusters, len(calls), span["days"]),
              "failed": failed,
              "previous": None if previous is None else {k: previous["overall"].get(k) for k in
                                                         ("share_moved", "saving_per_day")} | {"at": previous["at"]}}
    storage.write_json(plan_dir / RESULT_FILE, result)
    write_report(result, plan_dir)
    return result


__all__ = ["ConvertError", "Gate", "convert_store", "PLAN_FILE"]
