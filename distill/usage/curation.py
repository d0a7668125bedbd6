"""Which logged calls failed and which repeat another: marked, never dropped.

Failed calls get a status other than `ok`: `error` (an error response or an error span) and
`bad-arguments` (an answer whose tool-call arguments are not a JSON object) come from the
readers; `retried` is set here: a call whose request the same client sent again within
RETRY_WINDOW (or later in the same import when the log has no times), which the agent
evidently took for a failure. Only calls of one import are compared for retries.

Duplicates are marked `exact` (the same conversation, tools and answer as an earlier call, tool
call ids aside) or `near` (MinHash estimate of Jaccard similarity at or above the near-dedup
filter's default threshold, on the text that tells one step of an agent from another: the
task (first user turn), what is new since the last answer, and the answer; the system prompt
and earlier history, which an agent's calls all share, are left out). The first call of a
cluster, in store order then import order, stays unmarked; the rest name it in `duplicate_of`.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np

from distill.filters.dedup import NearDedupParams
from distill.filters.minhash import minhash_signatures, near_duplicate_roots, permutations
from distill.lineage import digest
from distill.usage.records import Call

RETRY_WINDOW = timedelta(minutes=10)  # an agent retries within seconds; the same question a day later is new work
NEAR = NearDedupParams()  # the near-dedup filter's defaults: one notion of "near duplicate" in distill


def retry_key(call: Call) -> str:
    """Who sent what: computed before redaction, which could make two different requests alike."""
    return digest(call.request_key(), call.client_id, call.workload_id)


def mark_retries(calls: list[Call], keys: list[str]) -> int:
    """Marks the calls that were sent again; returns how many. `keys[i]` is retry_key(calls[i])."""
    def when(i: int) -> tuple:  # logged time, then import order; calls without a time after the rest
        t = calls[i].timestamp
        return (t is None, t.timestamp() if t else 0.0, i)

    order = sorted(range(len(calls)), key=when)
    last: dict[str, int] = {}
    marked = 0
    for i in order:
        earlier = last.get(keys[i])
        if earlier is not None and calls[earlier].status == "ok" and _soon_after(calls[earlier], calls[i]):
            calls[earlier].status = "retried"
            calls[earlier].status_reason = f"the same request was sent again ({calls[i].source})"
            marked += 1
        last[keys[i]] = i
    return marked


def _soon_after(first: Call, then: Call) -> bool:
    if first.timestamp is None or then.timestamp is None:
        return True
    return timedelta(0) <= then.timestamp - first.timestamp <= RETRY_WINDOW


def _without_ids(turns: list[dict]) -> list[dict]:
    """Turns with tool-call ids numbered in order: ids are random per call, the exchange is not."""
    ids: dict[str, str] = {}
    out = []
    for t in turns:
        t = dict(t)
        if t.get("tool_calls"):
            t["tool_calls"] = [{**c, "id": ids.setdefault(c["id"], f"call_{len(ids)}")} for c in t["tool_calls"]]
        if t.get("tool_call_id"):
            t["tool_call_id"] = ids.setdefault(t["tool_call_id"], f"call_{len(ids)}")
        out.append(t)
    return out


def content_key(call: Call) -> str:
    """Equal for two calls with the same conversation, tools and answer (after redaction)."""
    return digest(_without_ids(call.prompt + call.completion), call.tools, len(call.prompt))


def dedup_text(call: Call) -> str:
    """The task, what is new since the last answer, and the answer (see the module's note)."""
    first_user = next((t for t in call.prompt if t["role"] == "user"), None)
    last_answer = max((i for i, t in enumerate(call.prompt) if t["role"] == "assistant"), default=-1)
    turns = ([first_user] if first_user and call.prompt.index(first_user) <= last_answer else []) \
        + call.prompt[last_answer + 1:] + call.completion
    parts = []
    for t in turns:
        if t["role"] == "system":
            continue
        parts.append(t.get("content") or "")
        for c in t.get("tool_calls") or []:
            parts.append(f"{c['function']['name']} {c['function']['arguments']}")
    return "\n".join(parts)


def signatures(calls: list[Call]) -> np.ndarray:
    a, b = permutations(NEAR.num_perm, NEAR.seed)
    return minhash_signatures([dedup_text(c) for c in calls], NEAR.shingle_size, a, b)


def mark_duplicates(calls: list[Call], keys: list[str], sig: np.ndarray, known_ids: list[str],
                    known_keys: dict[str, str], known_sig: np.ndarray) -> None:
    """Marks calls[i] (content key keys[i], signature sig[i]) that repeat a call already in the
    store (ids, content key -> id, signatures, in store order) or an earlier one of `calls`."""
    first = dict(known_keys)
    for call, key in zip(calls, keys):
        if key in first:
            call.duplicate, call.duplicate_of = "exact", first[key]
        else:
            first[key] = call.call_id
    roots = near_duplicate_roots(np.concatenate([known_sig.reshape(-1, sig.shape[1]), sig]), NEAR.threshold)
    ids = known_ids + [c.call_id for c in calls]
    for i, call in enumerate(calls):
        root = roots[len(known_ids) + i]
        if call.duplicate is None and root != len(known_ids) + i:
            call.duplicate, call.duplicate_of = "near", ids[root]

