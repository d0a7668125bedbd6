"""What one cluster of calls is, for the clustering's report: its label and task type (from the
answers' shape), size and tokens, tools, labels, example user turns, models and their cost."""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
from sklearn.preprocessing import normalize

from distill.usage.features import CallView, similarities, top_terms
from distill.usage.prices import Prices

EXAMPLES, EXAMPLE_CHARS = 2, 160
TASK_TYPES = {"tool_call": "tool call", "json": "extraction", "label": "classification", "text": "free text"}
MAX_LABELS = 30  # more distinct short answers than this is no fixed label set: free text


def tokens(row: dict) -> int:
    return (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0)


def _task_type(kinds: Counter, labels: set[str]) -> str:
    kind = max((k for k in kinds if k != "none"), key=lambda k: (kinds[k], k), default=None)
    if kind == "label" and len(labels) > MAX_LABELS:
        return "free text"
    return TASK_TYPES.get(kind, "unknown")


def _examples(members: list[int], rows: list[dict], views: list[CallView], X) -> list[str]:
    good = [i for i in members if rows[i]["status"] == "ok" and not rows[i]["duplicate"]] or members
    cent = normalize(np.asarray(X[good].mean(axis=0)).reshape(1, -1))
    order = np.argsort(-similarities(X[good], cent).ravel(), kind="stable")
    out: list[str] = []
    for j in order:
        text = " ".join(views[good[j]].user.split())
        text = text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"
        if text and text not in out:
            out.append(text)
        if len(out) == EXAMPLES:
            break
    return out


def describe(members: list[int], rows: list[dict], views: list[CallView], X, prices: Prices, tag: str | None,
             background: Counter) -> dict:
    """One cluster's report but for its id and shares. `background`: in how many calls of the
    store each word occurs (for an automatic cluster's label)."""
    kinds = Counter(views[i].answer_kind for i in members)
    labels = {views[i].answer for i in members if views[i].answer_kind == "label"}
    offered = Counter(t for i in members for t in views[i].tools)
    called = Counter(s for i in members for s in views[i].answer_shape if views[i].answer_kind == "tool_call" and "." not in s)
    by_model: dict[str, list[int]] = defaultdict(list)
    for i in members:
        by_model[rows[i]["model"] or rows[i]["response_model"] or "(not logged)"].append(i)
    models = []
    for model, calls in sorted(by_model.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        p_tok = sum(rows[i]["prompt_tokens"] or 0 for i in calls)
        c_tok = sum(rows[i]["completion_tokens"] or 0 for i in calls)
        cost = prices.cost(model, p_tok, c_tok)
        models.append({"model": model, "calls": len(calls), "prompt_tokens": p_tok, "completion_tokens": c_tok,
                       "priced_as": prices.find(model), "cost_usd": None if cost is None else round(cost, 6)})
    unknown = [m["model"] for m in models if m["cost_usd"] is None]
    task_type = _task_type(kinds, labels)
    fixed_labels = len(labels) <= MAX_LABELS
    return {
        "label": tag if tag is not None else _label(members, views, task_type, fixed_labels, background),
        "calls": len(members), "tokens": sum(tokens(rows[i]) for i in members),
        "task_type": task_type, "answer_kinds": dict(kinds.most_common()),
        "labels": sorted(labels) if fixed_labels else None,
        "tools_offered": [t for t, _ in offered.most_common()], "tools_called": dict(called.most_common()),
        "system_prompts": len({views[i].system for i in members}),
        "models": models, "cost_usd": None if unknown else round(sum(m["cost_usd"] for m in models), 6),
        "cost_unknown_for": unknown,
        "failed": sum(rows[i]["status"] != "ok" for i in members),
        "duplicates": sum(bool(rows[i]["duplicate"]) for i in members),
        "examples": _examples(members, rows, views, X),
    }


def _label(members: list[int], views: list[CallView], task_type: str, fixed_labels: bool, background: Counter) -> str:
    """What an automatic cluster does, from its answers: the tools it calls, the keys it extracts,
    the labels it gives, or else the words that set its prompts apart."""
    shapes = Counter(s for i in members for s in views[i].answer_shape if "." not in s)
    labels = Counter(views[i].answer for i in members if views[i].answer_kind == "label")
    top = [s for s, _ in shapes.most_common(3)] or [w for w, _ in labels.most_common(3) if fixed_labels]
    more = len(shapes or labels) > 3
    if not top:
        top = top_terms([views[i].system + " " + views[i].user for i in members], background, len(views))
        more = False
    return f"{task_type}: " + (", ".join(top) + (", ..." if more else "") if top else "no distinctive words")
