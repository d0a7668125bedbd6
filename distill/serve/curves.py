"""The calibration curve's measures (RouteLLM's): points of (share of calls sent to the LLM,
share of the performance gap recovered), their upper envelope, APGR and CPT."""

from __future__ import annotations

import numpy as np

EPS = 1e-9


def envelope(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(LLM share, gap recovered) from (0, 0), every call to the student, to (1, 1), every call to
    the LLM; at a share reached twice, the better. Straight lines join them: sending a random
    part of the calls one way and the rest the other reaches any point between two."""
    best: dict[float, float] = {0.0: 0.0, 1.0: 1.0}
    for share, recovered in points:
        best[share] = max(best.get(share, -np.inf), recovered)
    return sorted(best.items())


def apgr(points: list[tuple[float, float]]) -> float:
    """Average performance gap recovered: the area under the gap-recovered curve over the share
    of calls sent to the LLM, from 0 to 1 (RouteLLM)."""
    pts = envelope(points)
    return float(sum((s1 - s0) * (r0 + r1) / 2 for (s0, r0), (s1, r1) in zip(pts, pts[1:])))


def cpt(points: list[tuple[float, float]], level: float) -> float:
    """Call-performance threshold: the least share of calls sent to the LLM that recovers `level`
    of the performance gap on the curve (RouteLLM's CPT(50%) is cpt(points, 0.5))."""
    pts = envelope(points)
    for (s0, r0), (s1, r1) in zip(pts, pts[1:]):
        if r0 >= level - EPS:
            return s0
        if r1 >= level - EPS:
            return s0 + (s1 - s0) * (level - r0) / (r1 - r0)
    return 1.0
