"""The router's own metrics: calls by route, fallbacks by reason, failed checks and latency.

The Router (plain Python) hands each answer to a recorder; `record` turns it into counts and one
latency. NoMetrics records nothing (the default, and tests' routers); RayMetrics records with Ray
Serve's metrics API (ray.util.metrics with the deployment, replica and application tags added),
which Ray exports in Prometheus format on each node's metrics port beside Ray Serve's own
`ray_serve_*` metrics, prefixed `ray_` (a counter also gets `_total`).
"""

from __future__ import annotations

from typing import Any, Protocol

CALLS, FALLBACKS, VERIFIER_FAILURES, LATENCY = ("distill_router_calls", "distill_router_fallbacks",
                                                "distill_router_verifier_failures", "distill_router_latency_seconds")
LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60]
# The router's reasons for asking the fallback, as a fixed set of tag values (reason kinds).
REASON_KINDS = {"unrouted": "unrouted", "no-student": "no_student", "policy-llm": "policy_llm",
                "low-confidence": "low_confidence", "breaker-open": "breaker_open",
                "student-error": "student_error", "student-timeout": "student_timeout",
                "verifier-failed": "verifier_failed", "n-above-1": "unservable", "tool-choice": "unservable",
                "response-format": "unservable"}
NOT_FALLBACKS = {"timeout", "router-error"}  # nobody answered, and the fallback may not have been asked


class Recorder(Protocol):
    def count(self, name: str, tags: dict[str, str]) -> None: ...
    def observe(self, name: str, value: float, tags: dict[str, str]) -> None: ...


class NoMetrics:
    def count(self, name: str, tags: dict[str, str]) -> None:
        pass

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        pass


def reason_kind(reason: str) -> str:
    """The tag value of a fallback's reason: `student-error+fallback-failed` -> student_error,
    `unsupported-field-logprobs` -> unservable; an unknown reason -> other."""
    reason = reason.split("+", 1)[0]
    if reason.startswith("unsupported-field-"):
        return "unservable"
    return REASON_KINDS.get(reason, "other")


def record(recorder: Recorder, served: Any) -> None:  # served: a distill.serve.router.Served
    """One answered (or failed) call: its count by route, cluster, model and status; the fallback
    and its reason kind; a failed check of the student's answer (whatever the policy did with it);
    the call's latency by route."""
    cluster = served.cluster or "none"
    model = str(served.body.get("model") or "") if served.status == 200 else ""
    recorder.count(CALLS, {"route": served.route, "cluster": cluster, "model": model, "status": str(served.status)})
    if served.reason is not None and served.reason not in NOT_FALLBACKS:
        recorder.count(FALLBACKS, {"cluster": cluster, "reason": reason_kind(served.reason)})
    score = (served.verdict or {}).get("score")
    if score is not None and score < 1.0:
        recorder.count(VERIFIER_FAILURES, {"cluster": cluster})
    recorder.observe(LATENCY, served.latency_ms / 1000, {"route": served.route})


class RayMetrics:
    """The metrics as Ray Serve metrics; made in the router deployment's replica."""

    def __init__(self):
        from ray.serve import metrics

        self.counters = {
            CALLS: metrics.Counter(CALLS, "chat-completion calls by who answered (route: a student's name, llm, "
                                          "none), cluster, answering model and HTTP status",
                                   tag_keys=("route", "cluster", "model", "status")),
            FALLBACKS: metrics.Counter(FALLBACKS, "calls sent to the fallback model, by cluster and reason kind",
                                       tag_keys=("cluster", "reason")),
            VERIFIER_FAILURES: metrics.Counter(VERIFIER_FAILURES, "student answers that failed their cluster's "
                                                                  "check", tag_keys=("cluster",))}
        self.histograms = {LATENCY: metrics.Histogram(LATENCY, "seconds from a request to its answer, by route",
                                                      boundaries=LATENCY_BUCKETS, tag_keys=("route",))}

    def count(self, name: str, tags: dict[str, str]) -> None:
        self.counters[name].inc(1, tags)

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.histograms[name].observe(value, tags)
