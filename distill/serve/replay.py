"""`distill serve-replay`: a conversion's held-out logged calls sent through the router, in-process
(no Ray Serve, no HTTP), and what serving them would have given: accuracy relative to the
LLM-only answers, the share the students took, the cost per 1,000 calls and the router's latency;
then the calibration of each student's `min_confidence` on the same calls (issue 20, items 2 and 5).

The fallback of a replay is the logged model itself: it answers each held-out call with its logged
answer, which is also the reference, so the LLM-only accuracy is 1.0 by definition. A student's
answer is scored against the logged answer by the cluster's own verifier, the one convert scored
it with (its recipe's `verifiers`). Costs follow convert's conventions: the logged model's price
for the logged tokens of the calls the LLM answers, and a student's seconds per answer (measured
here, one call at a time) times the hardware's price per hour for the calls it is asked.

Calibration: a call whose routing confidence is below `min_confidence` goes to the LLM. Over the
calls routed to a student, each threshold gives a point (share of calls sent to the LLM, quality);
RouteLLM's measures summarise the curve: the performance gap recovered (quality - student-only
quality) / (LLM quality - student-only quality), APGR (its area over the LLM share from 0 to 1)
and CPT(x) (the LLM share needed to recover x of the gap). To score every threshold the student is
asked even on the calls the configured threshold sends to the LLM; those answers are not served
and count in neither cost nor latency.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from distill import storage
from distill.lineage import code_version
from distill.serve.config import ServeConfig
from distill.serve.curves import apgr, cpt, envelope  # noqa: F401  (apgr, cpt: part of this module's API)
from distill.serve.replay_report import render_html
from distill.serve.router import LLM, Router, StudentClient, UpstreamError, check_answer

KIND = "distill serve replay"
RESULT_FILE, REPORT_FILE = "replay.json", "replay.html"
CPT_LEVELS = (0.5, 0.8)  # RouteLLM reports CPT(50%) and CPT(80%)
EPS = 1e-9


class ReplayError(Exception):
    """The conversion cannot be replayed; the message says what to give instead."""


# ---- the held-out calls ---------------------------------------------------------------------

@dataclass
class HeldOut:
    """One chosen cluster of a conversion: its held-out rows and how convert scores them."""

    id: str
    task_type: str
    verifiers: list  # the recipe's Verifier components
    rows: list[dict]  # heldout*.jsonl rows: messages, tools, reference, logged, usage, call_id
    price_model: str | None  # the logged model its calls are priced at
    llm_latency_ms: float | None  # the logged model's median latency on the cluster (convert.json)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_conversion(folder: str | Path, limit: int | None = None) -> tuple[list[HeldOut], dict | None]:
    """The chosen clusters of a plan folder (plan.json) with their held-out rows (at most `limit`
    each, in file order), and convert.json when convert ran there. Raises ReplayError."""
    from distill.problems import RecipeError
    from distill.recipe import load_recipe
    from distill.usage.plan import KIND as PLAN_KIND, PLAN_FILE

    folder = Path(folder)
    if not folder.is_dir():
        raise ReplayError(f"{folder}: no such folder; give the folder `distill usage plan STORE --out DIR` or "
                          "`distill usage convert STORE --out DIR` wrote")
    plan = _read_json(folder / PLAN_FILE)
    if not plan or plan.get("kind") != PLAN_KIND:
        raise ReplayError(f"{folder}: no {PLAN_FILE} of a plan in it; give the folder `distill usage convert STORE "
                          f"--out DIR` wrote")
    if limit is not None and limit < 1:
        raise ReplayError(f"--limit {limit}: give 1 or more held-out calls per cluster")
    converted = _read_json(folder / "convert.json")
    latency = {c["id"]: c.get("llm_latency_ms") for c in (converted or {}).get("clusters", [])}
    clusters = []
    for entry in plan.get("clusters", []):
        if not entry.get("chosen"):
            continue
        try:
            recipe = load_recipe(folder / entry["recipe"])
        except RecipeError as e:
            raise ReplayError(f"cluster {entry['id']}: its recipe does not load, so its verifier is unknown:\n{e}") \
                from None
        rows = [json.loads(line) for p in sorted((folder / entry["id"]).glob("heldout*.jsonl"))
                for line in p.read_text().splitlines() if line.strip()]
        # Held-out rows come from models with a known licence only; the busiest of them prices the calls.
        models = sorted((m for m in entry.get("logged_models", []) if m.get("licence")), key=lambda m: -m["calls"])
        clusters.append(HeldOut(entry["id"], entry["task_type"], recipe.verifiers, rows[:limit],
                                models[0]["model"] if models else None, latency.get(entry["id"])))
    if not any(c.rows for c in clusters):
        raise ReplayError(f"{folder}: no chosen cluster has held-out calls (heldout*.jsonl); plan a store with "
                          "enough calls first (distill usage plan)")
    return clusters, converted


def request_of(row: dict, model: str | None) -> dict:
    """The held-out call as the agent sent it: a chat.completions.create body."""
    return {"model": model or "logged", "messages": row["messages"], **({"tools": row["tools"]} if row.get("tools") else {})}


def _key(request: dict) -> str:
    return json.dumps([request["messages"], request.get("tools")], sort_keys=True, ensure_ascii=False)


def score_answer(cluster: HeldOut, row: dict, text: str | None, finish_reason: str | None) -> float | None:
    """1.0 when the cluster's verifier accepts the answer against the logged one, else 0.0 (no
    answer: 0.0); None when the verifier runs a model (a judge), which a replay does not start."""
    from distill.prompts.conversation import question_of
    from distill.stages.verify import accepted, model_verifiers, verify_batch

    if model_verifiers(cluster.verifiers):
        return None
    if text is None:
        return 0.0
    ref = row["reference"]
    ref = ref if ref is None or isinstance(ref, str) else json.dumps(ref)  # as the jsonl prompt source passes it
    verdicts = verify_batch(cluster.verifiers, [text], [ref], questions=[question_of(row["messages"])],
                            finish_reasons=[finish_reason], tools=[row.get("tools")])[0]
    return float(accepted(verdicts, None, cluster.verifiers))


# ---- the router's counterparts in a replay ---------------------------------------------------

class LoggedModel:
    """The fallback of a replay: answers each held-out call with the logged answer."""

    def __init__(self):
        self.answers: dict[str, tuple[dict, str]] = {}
        self.seconds = 0.0

    def add(self, request: dict, row: dict, model: str | None) -> None:
        self.answers[_key(request)] = (row, model or "logged")

    async def chat(self, request: dict) -> dict:
        started = time.perf_counter()
        try:
            found = self.answers.get(_key(request))
            if found is None:
                raise UpstreamError("a request the replay has no logged answer for")
            row, model = found
            usage = row.get("usage") or {}
            finish = "tool_calls" if row["logged"].get("tool_calls") else "stop"
            return {"id": "replay", "object": "chat.completion", "created": 0, "model": model,
                    "choices": [{"index": 0, "message": row["logged"], "finish_reason": finish}],
                    "usage": {"prompt_tokens": usage.get("prompt_tokens", 0),
                              "completion_tokens": usage.get("completion_tokens", 0)}}
        finally:
            self.seconds += time.perf_counter() - started


class TimedStudent:
    """A student client that keeps its last answer and the seconds spent waiting for it."""

    def __init__(self, client: StudentClient):
        self.client, self.seconds, self.last = client, 0.0, None

    async def answer(self, request: dict):
        started = time.perf_counter()
        try:
            self.last = await self.client.answer(request)
            return self.last
        finally:
            self.seconds += time.perf_counter() - started


# ---- calibration: the threshold curve, APGR, CPT, the threshold for a target -----------------

@dataclass(frozen=True)
class CalibrationCall:
    confidence: float  # the classifier's routing confidence
    score: float  # the student's answer against the logged one (no answer: 0)
    kept: bool  # the router would return the student's answer (it answered, and a cascade's check passed)


def curve(calls: list[CalibrationCall], llm_quality: float = 1.0) -> dict:
    """The points (threshold, share of calls sent to the LLM, quality, gap recovered) as
    min_confidence takes each value that changes the routing, from 0 up; student-only quality
    (every call answered by the student); APGR and CPT."""
    if not calls:
        return {"calls": 0, "student_only": None, "llm": llm_quality, "points": [], "apgr": None, "cpt": {}}
    student_only = statistics.fmean(c.score for c in calls)
    gap = llm_quality - student_only
    points = []
    for t in sorted({0.0, 1.0} | {c.confidence for c in calls if 0 < c.confidence <= 1}):
        to_llm = [c.confidence < t or not c.kept for c in calls]
        if points and sum(to_llm) / len(calls) == points[-1]["llm_share"]:
            continue  # routes as the lower threshold does
        quality = statistics.fmean(llm_quality if sent else c.score for sent, c in zip(to_llm, calls))
        points.append({"threshold": t, "llm_share": sum(to_llm) / len(calls), "quality": quality,
                       "recovered": (quality - student_only) / gap if gap > EPS else None})
    measured = [(p["llm_share"], p["recovered"]) for p in points if p["recovered"] is not None]
    return {"calls": len(calls), "student_only": student_only, "llm": llm_quality, "points": points,
            "apgr": apgr(measured) if gap > EPS else None,
            "cpt": {f"{x:.0%}": cpt(measured, x) for x in CPT_LEVELS} if gap > EPS else {}}


def pick_threshold(calibration: dict, keep: float | None = None, max_llm_share: float | None = None) -> dict:
    """The min_confidence meeting one target over a curve's points: `keep`, the fewest LLM calls
    that keep at least that share of the LLM's quality; `max_llm_share`, the best quality that
    sends at most that share of the calls to the LLM. {"threshold": None, "why": ...} when no
    threshold meets it."""
    if (keep is None) == (max_llm_share is None):
        raise ValueError("give one target: keep (a share of the LLM's quality) or max_llm_share")
    points, llm = calibration["points"], calibration["llm"]
    if not points:
        return {"threshold": None, "why": "no calls were routed to the student"}
    if keep is not None:
        meets = [p for p in points if p["quality"] >= keep * llm - EPS]
        if not meets:
            best = max(points, key=lambda p: p["quality"])
            return {"threshold": None, "why": f"no threshold keeps {keep:.0%} of the LLM's quality; the best "
                                              f"(min_confidence {best['threshold']:.3g}) keeps "
                                              f"{best['quality'] / llm:.0%}: make the policy llm"}
        chosen = min(meets, key=lambda p: (p["llm_share"], p["threshold"]))
    else:
        meets = [p for p in points if p["llm_share"] <= max_llm_share + EPS]
        if not meets:
            return {"threshold": None, "why": f"even min_confidence 0 sends {points[0]['llm_share']:.0%} of the calls "
                                              f"to the LLM (answers that failed or failed the check), above "
                                              f"{max_llm_share:.0%}"}
        chosen = min(meets, key=lambda p: (-p["quality"], p["llm_share"], p["threshold"]))
    return {"threshold": chosen["threshold"], "llm_share": chosen["llm_share"], "quality": chosen["quality"],
            "relative": chosen["quality"] / llm if llm else None}


# ---- the replay -----------------------------------------------------------------------------

@dataclass
class Settings:
    limit: int | None = None  # held-out calls per cluster at most; None: all
    hardware_usd_per_hour: float | None = None  # None: convert's setting, else convert's default
    prices: str | None = None  # the price table; None: convert's, else the shipped one
    keep: float | None = 0.9  # a target for the threshold picker: this share of the LLM's quality (convert's gate)
    max_llm_share: float | None = None  # a target: at most this share of the calls to the LLM


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"p50": None, "p99": None}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def _money_per_1000(costs: list[float | None]) -> float | None:
    return None if not costs or any(c is None for c in costs) else sum(costs) / len(costs) * 1000


def summarise(calls: list[dict]) -> dict:
    """Accuracy against the logged answers, the students' share, cost per 1,000 calls and latency of replayed calls."""
    verified = [c["score"] for c in calls if c["score"] is not None]
    # Accuracy relative to the LLM-only answers: the LLM's own is 1.0, so it is the accuracy itself.
    return {"calls": len(calls), "relative": statistics.fmean(verified) if verified else None,
            "unverified": len(calls) - len(verified),
            "student_share": sum(c["answered_by"] not in (LLM, "none") for c in calls) / len(calls) if calls else None,
            "routes": dict(Counter(c["answered_by"] if c["reason"] is None else f"{c['answered_by']}; {c['reason']}"
                                   for c in calls).most_common()),
            "cost_per_1000": _money_per_1000([c["cost_usd"] for c in calls]),
            "llm_only_cost_per_1000": _money_per_1000([c["llm_cost_usd"] for c in calls]),
            "router_ms": _percentiles([c["router_ms"] for c in calls]),
            "call_ms": _percentiles([c["call_ms"] for c in calls])}


async def _replay(clusters: list[HeldOut], config: ServeConfig, classifier, students: dict[str, StudentClient],
                  prices, per_hour: float, say: Callable[[str], None]) -> tuple[list[dict], dict]:
    timed = {name: TimedStudent(client) for name, client in students.items()}
    upstream = LoggedModel()
    router = Router(config, classifier, timed, upstream, None, clock=time.perf_counter)
    calls, calibration_asks, seconds = [], Counter(), {name: [] for name in timed}
    for cluster in clusters:
        say(f"{cluster.id}: replaying {len(cluster.rows)} held-out call(s)")
        for row in cluster.rows:
            request = request_of(row, cluster.price_model)
            upstream.add(request, row, cluster.price_model)
            for t in timed.values():
                t.seconds, t.last = 0.0, None
            upstream.seconds = 0.0
            served = await router.handle(request)
            asked = timed.get(served.student) if served.student else None
            model_s = upstream.seconds + sum(t.seconds for t in timed.values())
            answer = asked.last if asked else None
            if asked and asked.last is not None:
                seconds[served.student].append(asked.seconds)
            student = config.student(served.cluster) if served.student else None
            check, paid = served.verdict, answer is not None  # the student was asked for the served answer
            if student is not None and served.reason == "low-confidence":
                # Not served: asked for the calibration only, so every threshold can be scored.
                asked.seconds, asked.last = 0.0, None
                answer, _ = await router._ask(student, request)
                calibration_asks[student.name] += 1
                if answer is not None:
                    seconds[student.name].append(asked.seconds)
                    score, reason = check_answer(student.verifier, answer, request)
                    check = {"verifier": student.verifier, "score": score, "reason": reason}
            student_score = None
            if student is not None and student.policy != "llm":
                student_score = score_answer(cluster, row, answer.text if answer else None,
                                             answer.finish_reason if answer else None)
            if served.route == LLM:
                final = 1.0  # the logged answer itself
            elif student is not None and served.route == student.name:
                final = student_score
            else:
                final = 0.0  # nobody answered
            usage = row.get("usage") or {}
            llm_cost = prices.cost(cluster.price_model, usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
            llm_ms = (cluster.llm_latency_ms or 0.0) if served.route == LLM else 0.0
            calls.append({"cluster": cluster.id, "call_id": row.get("call_id"), "routed_to": served.cluster,
                          "confidence": served.confidence, "how": served.how, "student": served.student,
                          "policy": student.policy if student else None, "answered_by": served.route,
                          "reason": served.reason, "check": check, "student_answered": answer is not None,
                          "student_paid": paid, "student_score": student_score, "score": final,
                          "router_ms": served.latency_ms - model_s * 1000, "call_ms": served.latency_ms + llm_ms,
                          "llm_cost_usd": llm_cost})
    per_answer = {name: statistics.median(s) if s else None for name, s in seconds.items()}
    for c in calls:  # convert's convention: a student's cost is its seconds per answer at the hardware's price
        student_cost = 0.0
        if c["student_paid"]:
            s = per_answer.get(c["student"])
            student_cost = None if s is None else s * per_hour / 3600
        llm = c["llm_cost_usd"] if c["answered_by"] == LLM else 0.0
        c["cost_usd"] = None if student_cost is None or llm is None else student_cost + llm
    return calls, {"seconds_per_answer": per_answer, "calibration_asks": dict(calibration_asks)}


def calibrate(calls: list[dict], config: ServeConfig, settings: Settings) -> dict:
    """Per student (policy student or cascade): the threshold curve over the calls routed to it,
    APGR, CPT and the threshold each target asks for."""
    out = {}
    for s in config.students:
        if s.policy == "llm":
            continue
        mine = [c for c in calls if c["student"] == s.name and c["student_score"] is not None]
        points = [CalibrationCall(c["confidence"], c["student_score"],
                                  c["student_answered"] and (s.policy == "student" or _passes(c["check"])))
                  for c in mine]
        cal = curve(points)
        targets = {}
        if settings.keep is not None:
            targets[f"keep {settings.keep:g}"] = pick_threshold(cal, keep=settings.keep)
        if settings.max_llm_share is not None:
            targets[f"max_llm_share {settings.max_llm_share:g}"] = pick_threshold(cal, max_llm_share=settings.max_llm_share)
        out[s.name] = {"cluster": s.cluster, "policy": s.policy, "min_confidence": s.min_confidence, **cal,
                       "targets": targets}
    return out


def _passes(check: dict | None) -> bool:
    """Whether a cascade returns the answer: as the router decides, a check that could not run passes."""
    return check is None or check.get("score") is None or check["score"] >= 1.0


def replay_conversion(conversion: str | Path, config: ServeConfig, settings: Settings | None = None,
                      students: dict[str, StudentClient] | None = None, say: Callable[[str], None] = print) -> dict:
    """Replays the conversion's held-out calls through the router; writes replay.json (and
    replay.html) into the conversion's folder; returns the result. `students`: the clients by
    student name (default: a vLLM engine per student of the config, started here)."""
    from distill.usage.convert import Gate
    from distill.usage.classifier import RequestClassifier
    from distill.usage.prices import load_prices

    settings = settings or Settings()
    folder = Path(conversion)
    clusters, converted = read_conversion(folder, settings.limit)
    gate = (converted or {}).get("settings") or {}
    per_hour = (settings.hardware_usd_per_hour if settings.hardware_usd_per_hour is not None
                else gate.get("hardware_usd_per_hour", Gate.hardware_usd_per_hour))
    prices = load_prices(settings.prices or gate.get("prices"))
    classifier = RequestClassifier.load(config.classifier) if config.classifier else None
    # One call at a time: each call's model time is its own, and the latencies are a single client's.
    calls, measured = asyncio.run(_with_students(clusters, config, classifier, students, prices, per_hour, say))
    result = {"kind": KIND, "version": 1, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code_version": code_version(),
              "conversion": str(folder.resolve()), "config": config.model_dump(), "prices": prices.source,
              "hardware_usd_per_hour": per_hour, "limit": settings.limit,
              "llm": "the logged model: its logged answers are the references, so its accuracy is 1.0",
              "classifier_note": _in_sample(classifier, converted),
              "llm_latency": "each cluster's median logged latency (convert.json), added to the calls the LLM answered"
                             if converted else "not included: no convert.json with logged latencies",
              **measured,
              "clusters": {c.id: summarise([x for x in calls if x["cluster"] == c.id]) for c in clusters},
              "overall": summarise(calls), "calibration": calibrate(calls, config, settings), "calls": calls}
    storage.write_json(folder / RESULT_FILE, result)
    storage.write_text(folder / REPORT_FILE, render_html(result))
    return result


def _in_sample(classifier, converted: dict | None) -> str | None:
    """Whether the classifier learnt from the held-out calls (serve-config fits it on the whole store)."""
    if classifier is None or not converted:
        return None
    meta = classifier.meta
    if meta.get("store") == converted.get("store") and meta.get("learnt_from") == meta.get("store_calls"):
        return ("the classifier was learnt from every call of the store, the held-out ones too: its routes of them "
                "are in-sample, a little better than on new calls")
    return None


async def _with_students(clusters, config, classifier, students, prices, per_hour, say):
    engines = []
    if students is None:
        students = engines_for(config, clusters, say)
        engines = list(students.values())
        for name, engine in students.items():  # the first answer of an engine is slow: not measured
            await engine.answer({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8})
    try:
        return await _replay(clusters, config, classifier, students, prices, per_hour, say)
    finally:
        for engine in engines:
            shutdown = getattr(getattr(engine, "engine", None), "shutdown", None)
            if shutdown:
                shutdown()


def engines_for(config: ServeConfig, clusters, say) -> dict:
    from distill.backends.vllm_ray import cpu_engine_env
    from distill.serve.student import StudentEngine

    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    for k, v in cpu_engine_env().items():
        os.environ.setdefault(k, v)
    out = {}
    for s in config.students:
        if s.policy == "llm":
            continue
        say(f"starting {s.name} ({s.model})")
        out[s.name] = StudentEngine(s)
    return out


# ---- what is printed and the page -----------------------------------------------------------
