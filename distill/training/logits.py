"""The teacher's top-k log-probabilities as a run directory keeps them (samples/logprobs/), and
back: what `train.method: kd` distils from.

With `sampling.logprobs: k` every generated token of a sample comes with the teacher's k most
likely next tokens and their log-probabilities, plus the log-probability of the token it
sampled. A backend hands them over as plain lists in its result row (`logprobs`: token_ids,
token_logprobs, top_ids, top_logprobs); `TeacherTokens` is the same as arrays, and `encode` /
`decode` convert it to and from one LOGPROBS_SCHEMA row (distill/schema.py says the layout).

Precision: a log-probability is kept to 1/LOGPROB_SCALE nat (rounded, so within half of that)
and clamped to [LOGPROB_FLOOR, 0] nats: -inf and anything below e^-32 become the floor, which
as a probability is nil beside any top-k. Token ids are exact.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from distill.schema import LOGPROB_FLOOR, LOGPROB_SCALE, LOGPROBS_SCHEMA, NOT_IN_TOP_K

# Largest error of a stored log-probability within [LOGPROB_FLOOR, 0], in nats.
PRECISION = 0.5 / LOGPROB_SCALE
_MAX_UNITS = int(round(-LOGPROB_FLOOR * LOGPROB_SCALE))  # the floor, in (negated) fixed-point units


@dataclass(frozen=True)
class TeacherTokens:
    """One sample's generated tokens and the teacher's top-k at each: position i holds the
    distribution the teacher sampled token_ids[i] from."""

    token_ids: np.ndarray  # [n] int64: the generated tokens
    token_logprobs: np.ndarray  # [n] float32: the teacher's log-probability of each
    top_ids: np.ndarray  # [n, k] int64: the k most likely next tokens, most likely first
    top_logprobs: np.ndarray  # [n, k] float32: their log-probabilities, descending

    @property
    def n(self) -> int:
        return int(self.token_ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[1])

    @classmethod
    def from_lists(cls, lists: dict, k: int) -> "TeacherTokens":
        """From a backend result's `logprobs` (lists per position); checks the shapes."""
        n = len(lists["token_ids"])
        out = cls(np.asarray(lists["token_ids"], dtype=np.int64).reshape(n),
                  np.asarray(lists["token_logprobs"], dtype=np.float32).reshape(n),
                  np.asarray(lists["top_ids"], dtype=np.int64).reshape(n, k),
                  np.asarray(lists["top_logprobs"], dtype=np.float32).reshape(n, k))
        if (out.token_ids < 0).any() or (out.top_ids < 0).any():
            raise ValueError("negative token id in the teacher's log-probabilities")
        return out


def quantise(logprobs: np.ndarray) -> np.ndarray:
    """Log-probabilities as negated fixed-point units (uint16): NaN and -inf go to the floor,
    a rounding error above 0 to 0."""
    x = np.nan_to_num(np.asarray(logprobs, dtype=np.float64), nan=LOGPROB_FLOOR, neginf=LOGPROB_FLOOR, posinf=0.0)
    units = np.rint(-np.clip(x, LOGPROB_FLOOR, 0.0) * LOGPROB_SCALE)
    return np.clip(units, 0, _MAX_UNITS).astype(np.uint16)


def dequantise(units: np.ndarray) -> np.ndarray:
    return (-units.astype(np.float32) / LOGPROB_SCALE).astype(np.float32)


def encode(t: TeacherTokens) -> dict:
    """A LOGPROBS_SCHEMA row (without its sample id). Each position's top-k is ordered most
    likely first (the order carries nothing else) and stored as drops from one to the next; a
    generated token found in its top-k with the same stored log-probability is stored as its place."""
    n, k = t.n, t.k
    if k >= NOT_IN_TOP_K:
        raise ValueError(f"k={k}: at most {NOT_IN_TOP_K - 1} log-probabilities per position can be stored")
    top = quantise(t.top_logprobs).reshape(n, k).astype(np.int32)
    order = np.argsort(top, axis=1, kind="stable")  # fewest units = most likely first
    top = np.take_along_axis(top, order, axis=1)
    ids = np.take_along_axis(t.top_ids.reshape(n, k), order, axis=1)
    drops = top.copy()
    drops[:, 1:] = top[:, 1:] - top[:, :-1]
    sampled = quantise(t.token_logprobs).astype(np.int32)
    same = (ids == t.token_ids[:, None]) & (top == sampled[:, None])
    ranks = np.where(same.any(axis=1), same.argmax(axis=1), NOT_IN_TOP_K).astype(np.uint8)
    outside = ranks == NOT_IN_TOP_K
    biggest = max(int(t.token_ids.max(initial=0)), int(ids.max(initial=0)))
    width = 2 if biggest < 1 << 16 else 4
    id_type = np.dtype("<u2") if width == 2 else np.dtype("<u4")
    return {
        "k": k,
        "tokens": n,
        "id_bytes": width,
        "token_ranks": ranks.tobytes(),
        "token_ids": t.token_ids[outside].astype(id_type).tobytes(),
        "token_logprobs": sampled[outside].astype("<u2").tobytes(),
        "top_ids": ids.astype(id_type).tobytes(),
        "top_logprobs": drops.astype("<u2").tobytes(),
    }


def decode(row: dict) -> TeacherTokens:
    """The arrays of a LOGPROBS_SCHEMA row: ids exact, log-probabilities within PRECISION."""
    n, k = int(row["tokens"]), int(row["k"])
    id_type = np.dtype("<u2") if int(row["id_bytes"]) == 2 else np.dtype("<u4")
    top_ids = np.frombuffer(row["top_ids"], dtype=id_type).reshape(n, k).astype(np.int64)
    top = np.cumsum(np.frombuffer(row["top_logprobs"], dtype="<u2").reshape(n, k).astype(np.int32), axis=1)
    ranks = np.frombuffer(row["token_ranks"], dtype=np.uint8).astype(np.int64)
    outside = ranks == NOT_IN_TOP_K
    inside = np.flatnonzero(~outside)
    token_ids = np.empty(n, dtype=np.int64)
    sampled = np.empty(n, dtype=np.int32)
    token_ids[inside], sampled[inside] = top_ids[inside, ranks[inside]], top[inside, ranks[inside]]
    token_ids[outside] = np.frombuffer(row["token_ids"], dtype=id_type)
    sampled[outside] = np.frombuffer(row["token_logprobs"], dtype="<u2")
    return TeacherTokens(token_ids=token_ids, token_logprobs=dequantise(sampled), top_ids=top_ids,
                         top_logprobs=dequantise(top))


def table(rows: Iterable[tuple[str, TeacherTokens]]):
    """A LOGPROBS_SCHEMA table of (sample id, tokens) pairs."""
    import pyarrow as pa

    return pa.Table.from_pylist([{"sample_id": sid, **encode(t)} for sid, t in rows], schema=LOGPROBS_SCHEMA)


def row_digest(row: dict) -> bytes:
    """The stored bytes of one row, hashed: what lineage records of the logits a student saw."""
    h = hashlib.sha256(row["sample_id"].encode())
    for key in ("k", "tokens", "id_bytes"):
        h.update(int(row[key]).to_bytes(4, "little"))
    for key in ("token_ranks", "token_ids", "token_logprobs", "top_ids", "top_logprobs"):
        h.update(len(row[key]).to_bytes(8, "little"))
        h.update(row[key])
    return h.digest()
