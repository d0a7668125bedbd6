"""Probes: what a distilled student may have lost or inherited, beside its task score.

A probe is a fixed set of items (prompts with what scoring them needs) and a scorer. The
evaluate stage asks the teacher, the student's base and the student every item with the run's
sampling settings and scores the answers alike; the card shows the three side by side, and the
recipe's gate compares them.

A probe is registered by short name with its own recipe parameters:

    @PROBES.register("name", params=MyParams)
    class MyProbe(Probe):
        '''One line for `distill ls`.'''
        metrics = {"accuracy": HIGHER}

        def load(self, params, limit, seed) -> ProbeSet: ...
        def score(self, items, answers, params) -> list[dict[str, Ratio]]: ...

An item holds one or more requests (a bias item holds a pair); its answers come back in the
same order, None for a request the backend could not answer. The scorer returns, per item and
metric, a Ratio (numerator, denominator): most metrics are 0 or 1 over 1; instruction-level
accuracy is the instructions followed over the instructions given. A metric's value is the sum
of numerators over the sum of denominators, with a bootstrap interval over items.

Items whose data cannot be had offline (a checker's data files not installed) are left out of
the set and listed in `skipped` with the reason, never scored as a failure or a pass.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

from distill.registry import Params, Registry

HIGHER, LOWER = "higher", "lower"  # which way a metric is better


class Ratio(NamedTuple):
    num: float
    den: float


@dataclass
class ProbeItem:
    id: str
    # Each request: {"messages": [...chat turns...]} and optionally "tools" (OpenAI function tools)
    # and "max_tokens" (over the probe's own).
    requests: list[dict]
    data: dict = field(default_factory=dict)  # what the scorer needs (instructions, tests, the pair's attribute)


@dataclass
class ProbeSet:
    items: list[ProbeItem]
    total: int  # items in the whole set, before the limit and the skipped ones
    skipped: list[dict] = field(default_factory=list)  # {"id": ..., "reason": ...}, each item left out
    source: str = ""  # where the data came from: package and version, or "shipped with distill"
    licence: str = ""


class Probe:
    """Base of a probe: its metrics, how it loads its items and how it scores answers."""

    metrics: dict[str, str] = {}
    # A safety or bias probe: `distill probe-teacher` runs these on the teacher before sampling.
    safety: bool = False
    # Tokens an answer may take by default (None: the recipe's sampling.max_tokens).
    max_tokens: int | None = None

    def load(self, params: Params, limit: int | None, seed: int) -> ProbeSet:
        raise NotImplementedError

    def score(self, items: list[ProbeItem], answers: list[list[str | None]], params: Params) -> list[dict[str, Ratio]]:
        raise NotImplementedError

    def judged(self, items: list[ProbeItem], answers: list[list[str | None]], params: Params,
               ask: Callable[[list[str]], list[str | None]]) -> list[dict[str, Ratio]]:
        """The scores with a judge model deciding instead of rules, for probes whose params name one
        (`judge:`); `ask(prompts)` returns the judge's greedy answers (None: its request failed)."""
        raise NotImplementedError(f"{type(self).__name__} has no judge")


def _builtins() -> None:
    for module in ("ifbench", "refusal_probes", "humaneval", "bias", "tools", "custom"):
        importlib.import_module(f"distill.probes.{module}")


def _check(entry) -> str | None:
    probe = entry.fn
    if not isinstance(probe, Probe):
        return "a probe is an instance of distill.probes.Probe (its load and score methods and metrics)"
    if not probe.metrics:
        return "the probe names no metrics"
    return None


PROBES = Registry("probe", group="distill.probes", builtins=_builtins, check=_check)


def register(name: str, *, params: type[Params] = Params):
    """Class decorator: registers one instance of the Probe subclass under `name`."""

    def wrap(cls):
        probe = cls()
        probe.__doc__ = cls.__doc__
        PROBES.register(name, params=params)(probe)
        return cls

    return wrap


def subset(items: list, limit: int | None, seed: int) -> list:
    """At most `limit` of the items, drawn with `seed` (the same seed draws the same items, in
    the set's order); all of them without a limit."""
    if limit is None or limit >= len(items):
        return list(items)
    keep = set(random.Random(seed).sample(range(len(items)), limit))
    return [x for i, x in enumerate(items) if i in keep]


def item_id(probe: str, key: Any) -> str:
    """A stable id of an item: the probe's name and the item's key in its set."""
    text = json.dumps([probe, key], sort_keys=True, default=str)
    return f"{probe}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"


def user(text: str) -> dict:
    """A request of one user turn."""
    return {"messages": [{"role": "user", "content": text}]}


BOOTSTRAP_SAMPLES = 2000


def summarise(probe: Probe, per_item: list[dict[str, Ratio]], level: float = 0.95, seed: int = 0) -> dict:
    """Each metric's value over the items (sum of numerators / sum of denominators), its bootstrap
    interval (items resampled, seeded) and how many items and units it rests on. A metric no item
    measured has value None."""
    import numpy as np

    out = {}
    rng = np.random.default_rng(seed)
    for metric in probe.metrics:
        pairs = [r[metric] for r in per_item if metric in r and r[metric].den > 0]
        if not pairs:
            out[metric] = {"value": None, "ci95": None, "items": 0, "units": 0}
            continue
        num = np.array([p.num for p in pairs], dtype=float)
        den = np.array([p.den for p in pairs], dtype=float)
        draws = rng.integers(0, len(pairs), size=(BOOTSTRAP_SAMPLES, len(pairs)))
        ratios = num[draws].sum(axis=1) / den[draws].sum(axis=1)
        tail = (1 - level) / 2 * 100
        low, high = np.percentile(ratios, [tail, 100 - tail])
        out[metric] = {"value": float(num.sum() / den.sum()), "ci95": [float(low), float(high)],
                       "items": len(pairs), "units": float(den.sum())}
    return out
