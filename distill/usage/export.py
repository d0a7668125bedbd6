"""A cluster's logged calls as prompt rows a recipe reads (the `jsonl` source with messages_field,
tools_field, answer_field), and their split into train and held-out.

A row: `messages` (the turns sent, as logged and redacted), `tools` (the tools offered), and
`reference`, what the cluster's verifier checks a sample against: for tool calls
{"expected": [the logged calls]} ({"expected": []} when the logged answer called nothing, the
tool-call verifier's "no call"); otherwise the logged answer's text. `category` (the tool called,
or a classification's label) reports scores per kind; `call_id` and `timestamp` say where a row
came from. `logged` is the logged answer itself (the assistant message) and `usage` its token
counts: a teacher entry with `replay` serves them as the logged model's answers.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path

from distill import storage
from distill.prompts import conversation

NO_CALL = "(no call)"
_EPOCH = datetime.min.replace(tzinfo=timezone.utc)


def usable(row: dict) -> bool:
    """An answered call that is not a failure and not a repeat of an earlier one."""
    return row["status"] == "ok" and not row["duplicate"] and bool(row["completion"])


def _calls(turn: dict) -> list[dict]:
    out = []
    for call in turn.get("tool_calls") or []:
        args = call["function"]["arguments"]
        out.append({"name": call["function"]["name"], "arguments": json.loads(args) if args else {}})
    return out


def prompt_row(row: dict, task_type: str) -> dict | None:
    """The prompt row of a usable call; None when its answer gives the verifier nothing to check."""
    turn = row["completion"][-1]
    text = (turn.get("content") or "").strip()
    calls = _calls(turn)
    if task_type == "tool call":
        reference, category = {"expected": calls}, calls[0]["name"] if calls else NO_CALL
    elif calls or not text:  # a call, or nothing, where a text answer was the task
        return None
    else:
        reference, category = text, text if task_type == "classification" else None
    tools = json.loads(row["tools"]) if row["tools"] else None
    ts = row["timestamp"]
    logged = conversation.canonical([{**turn, "role": "assistant"}])[0]
    usage = {"prompt_tokens": row.get("prompt_tokens") or 0, "completion_tokens": row.get("completion_tokens") or 0}
    return {"messages": conversation.canonical(row["prompt"]), "tools": conversation.canonical_tools(tools),
            "reference": reference, "category": category, "logged": logged, "usage": usage, "call_id": row["call_id"],
            "timestamp": ts.isoformat() if ts else None, "_time": ts or _EPOCH}


def export_rows(calls: list[dict], task_type: str) -> list[dict]:
    """Prompt rows of the usable calls, in store order, one per distinct conversation (the first):
    a request asked twice must not sit on both sides of the split."""
    rows, seen = [], set()
    for order, call in enumerate(calls):
        if not usable(call):
            continue
        row = prompt_row(call, task_type)
        if row is None:
            continue
        key = conversation.conversation_id(row["messages"], row["tools"])
        if key not in seen:
            seen.add(key)
            rows.append({**row, "_order": order})
    return rows


def split(rows: list[dict], share: float, how: str, seed: int, stratify: bool) -> tuple[list[dict], list[dict]]:
    """(train, held-out). `how` time: the latest `share` of each stratum is held out (what a model
    trained today meets next); random: a seeded sample of each. Strata are the rows' categories
    (the tool called) when `stratify`, so every tool is seen on both sides; a stratum of one row
    trains."""
    strata: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        strata[r["category"] if stratify else ""].append(r)
    train, held = [], []
    rng = random.Random(seed)
    for name in sorted(strata):
        group = sorted(strata[name], key=lambda r: (r["_time"], r["_order"]))
        k = min(len(group) - 1, max(1, round(share * len(group)))) if len(group) > 1 else 0
        if how == "time":
            out = set(range(len(group) - k, len(group)))
        else:
            out = set(rng.sample(range(len(group)), k))
        for i, r in enumerate(group):
            (held if i in out else train).append(r)
    order = lambda r: r["_order"]  # noqa: E731 - store order again, whatever the strata
    return sorted(train, key=order), sorted(held, key=order)


CHARS_PER_TOKEN = 3  # rows as JSON: tool schemas run about 3 characters a token, prose about 4


def estimated_tokens(row: dict) -> int:
    """A row's tokens as a student sees them (turns, tools, answer), estimated from its JSON
    length: an over-estimate for prose, close for tool schemas; no tokenizer needed."""
    text = json.dumps([row["messages"], row["tools"], row.get("logged")], ensure_ascii=False)
    return len(text) // CHARS_PER_TOKEN + 1


def cap(rows: list[dict], limit: int | None, seed: int, stratify: bool, max_tokens: int | None = None) -> list[dict]:
    """At most `limit` of the rows, and no more than fit in `max_tokens` (estimated, at the rows'
    mean length): a seeded sample that keeps each category's share (each one that fits keeps at
    least a row); all of them when neither bound is below their number."""
    if max_tokens is not None and rows:
        mean = sum(map(estimated_tokens, rows)) / len(rows)
        by_tokens = max(1, int(max_tokens // mean))
        limit = by_tokens if limit is None else min(limit, by_tokens)
    if limit is None or len(rows) <= limit:
        return rows
    strata: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        strata[r["category"] if stratify else ""].append(r)
    rng = random.Random(seed)
    quota = {name: max(1, round(limit * len(group) / len(rows))) for name, group in strata.items()}
    while sum(quota.values()) > limit:  # rounding up the small strata overshot: trim the largest
        quota[max(quota, key=quota.get)] -= 1
    kept = [r for name in sorted(strata) for r in rng.sample(strata[name], min(quota[name], len(strata[name])))]
    return sorted(kept, key=lambda r: r["_order"])


def write_rows(path: Path, rows: list[dict]) -> None:
    """JSON lines, without the private sort keys; atomic, like every distill write."""
    text = "".join(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}, ensure_ascii=False) + "\n"
                   for r in rows)
    storage.write_text(path, text)
