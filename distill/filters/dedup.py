"""exact-dedup and near-dedup: flag rows that repeat an earlier row's text; the first one is kept.

exact-dedup compares whole texts after light normalisation, on the driver (a hash per row).

near-dedup is MinHash-LSH on Ray Data, so it runs on every node of the cluster:
1. signatures: each text becomes its set of word n-grams ("shingles"), each shingle a 64-bit hash,
   and the signature is the minimum over the set under `num_perm` hash permutations; the share of
   positions where two signatures agree estimates the Jaccard similarity of the two sets. Computed
   in `map_batches`, a whole batch at a time in numpy.
2. buckets: the signature is cut into b bands of r rows (b x r chosen from the threshold the way
   datasketch's MinHashLSH chooses them, weighted towards finding pairs) and each band hashed;
   rows sharing a band's hash are candidates. Grouped with a Ray Data groupby on a partition of
   the band hash; in a bucket each row is paired with the next 32 (a bucket of thousands of
   copies stays linear, and its rows still end in one cluster).
3. check: each candidate pair's estimated Jaccard must reach the threshold; clusters are the
   connected components of the pairs that do (union-find on the driver, over the pairs only).
   In a cluster the earliest row is kept and every other row is flagged.
The driver holds the signatures (4 bytes x num_perm per row, about as much as the rows it already
holds) to check the pairs; everything per row or per band runs on Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.registry import Params

On = Literal["completion", "prompt", "prompt+completion"]
# Words, and the arithmetic operators: "3 + 5" and "3 - 5" are different questions.
_WORD = re.compile(r"\w+|[-+*/=<>^%]")
_MAX_NGRAM = 32  # longest word n-gram hashed: the position weights below
# Fixed weights for a word's position inside an n-gram: the same n-gram hashes the same in every
# process and every run (Python's own hash() differs between Ray workers).
_POSITION = np.random.default_rng(0x5EED).integers(1, 2**63, size=_MAX_NGRAM, dtype=np.uint64) | np.uint64(1)
_NO_WORDS = np.uint32(0xFFFFFFFF)  # the signature of a text without a word: matches nothing
_LSH_WEIGHTS = (0.1, 0.9)  # (false positives, false negatives) when choosing bands x rows
_BUCKET_WINDOW = 32  # in a band bucket, each row is checked against the next 32 rows only: linear time
_GRAMS_PER_CHUNK = 16_384  # shingles hashed at once: 16k x num_perm x 8 bytes of scratch memory


def row_text(row: dict, on: str) -> str:
    prompt, completion = str(row.get("prompt_text") or ""), str(row.get("completion") or "")
    if on == "prompt":
        return prompt
    if on == "completion":
        return completion
    return f"{prompt}\x00{completion}"  # \x00: ("ab", "c") and ("a", "bc") stay different


class ExactDedupParams(Params):
    on: On = "prompt+completion"
    # Collapse whitespace runs and fold case first: "The answer is 4." and "the answer is  4."
    # are the same sample to a student.
    normalize: bool = True


@FILTERS.register("exact-dedup", params=ExactDedupParams, example="""
filters:
  - name: exact-dedup
    mode: drop
    on: prompt+completion     # or completion, prompt
    normalize: true           # collapse whitespace, fold case
""")
def exact_dedup(rows: list[dict], params: ExactDedupParams, ctx: FilterContext) -> list[FilterVerdict]:
    """Rows whose text equals an earlier row's (after whitespace and case normalisation)."""
    first: dict[str, str] = {}  # text -> sample_id of its first row
    out = []
    for row in rows:
        text = row_text(row, params.on)
        if params.normalize:
            text = " ".join(text.split()).casefold()
        if text in first:
            out.append(FilterVerdict(True, f"exact duplicate of {first[text]}", "exact-duplicate"))
        else:
            first[text] = row["sample_id"]
            out.append(FilterVerdict(False))
    return out


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place: spreads every input bit over the whole 64-bit hash."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def text_words(text: str) -> list[str]:
    """Lower-case words and operators, punctuation dropped: how dedup and decontamination read text."""
    return _WORD.findall(text.casefold())


def ngram_hashes(docs: list[list[str]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every word n-gram, index of its doc), grouped by doc in doc order.

    A doc with fewer than n words (but at least one) gives one hash of all its words, the same
    hash its words would get as an n-gram with n = its length. A doc without words gives none.
    """
    if not 1 <= n <= _MAX_NGRAM:
        raise ValueError(f"n-gram size {n} is outside 1..{_MAX_NGRAM}")
    import pandas as pd

    lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    flat = np.fromiter((w for d in docs for w in d), dtype=object, count=total)
    words = pd.util.hash_array(flat)  # SipHash with a fixed key: stable across processes
    owner = np.repeat(np.arange(len(docs)), lengths)
    end = np.repeat(np.cumsum(lengths), lengths)  # one past each position's doc
    pos = np.arange(total)
    padded = np.concatenate([words, np.zeros(n - 1, np.uint64)])
    acc = np.zeros(total, np.uint64)
    for j in range(n):
        term = padded[j : j + total] * _POSITION[j]
        term[pos + j >= end] = 0  # words past the doc's end do not count
        acc += term
    begin = end - np.repeat(lengths, lengths)
    keep = (pos + n <= end) | ((lengths[owner] < n) & (pos == begin))
    return _mix(acc[keep]), owner[keep]


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each hash permutation h(x) = (a x + b) >> 32, a odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    return a, rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)


def minhash_signatures(texts: list[str], shingle_size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of the texts' word shingles."""
    grams, owner = ngram_hashes([text_words(t) for t in texts], shingle_size)
    sig = np.full((len(texts), len(a)), _NO_WORDS, np.uint32)
    scratch = np.empty((min(len(grams), _GRAMS_PER_CHUNK), len(a)), np.uint64)
    for lo in range(0, len(grams), _GRAMS_PER_CHUNK):
        g, o = grams[lo : lo + _GRAMS_PER_CHUNK], owner[lo : lo + _GRAMS_PER_CHUNK]
        h = scratch[: len(g)]
        np.multiply(g[:, None], a[None, :], out=h)
        h += b
        h >>= np.uint64(32)
        starts = np.flatnonzero(np.r_[True, o[1:] != o[:-1]])
        docs = o[starts]  # a doc cut by the chunk boundary gets the minimum of both parts
        sig[docs] = np.minimum(sig[docs], np.minimum.reduceat(h, starts, axis=0).astype(np.uint32))
    return sig


@lru_cache(maxsize=64)
def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the weighted false positive and negative probabilities
    at this threshold, as datasketch's MinHashLSH chooses them."""
    from datasketch import MinHashLSH

    # Missed pairs weigh 9 to 1: a spurious candidate costs one signature comparison, a missed
    # pair is a duplicate kept. At 0.8 and 128 permutations a pair of similarity 0.85 shares a
    # band 97% of the time (69% with equal weights), one of 0.4 under 0.5%.
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
    return lsh.b, lsh.r


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(len(sig), bands) uint64: a hash of each band's values, different for each band."""
    cut = sig[:, : bands * rows].reshape(len(sig), bands, rows).astype(np.uint64)
    keys = (cut * _POSITION[:rows]).sum(axis=2, dtype=np.uint64)
    keys += np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return _mix(keys)


def bucket_pairs(keys: np.ndarray, idx: np.ndarray, window: int = _BUCKET_WINDOW) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) row pairs sharing a bucket key: each row with the next `window` rows of
    its bucket, in row order (all pairs of buckets up to window + 1 rows)."""
    order = np.lexsort((idx, keys))
    k, i = keys[order], idx[order]
    lo, hi = [], []
    for d in range(1, window + 1):
        same = k[d:] == k[:-d]
        if not same.any():
            break
        lo.append(i[:-d][same])
        hi.append(i[d:][same])
    if not lo:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(lo), np.concatenate(hi)


def jaccard(sig: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Estimated Jaccard similarity of rows a[k] and b[k]: the share of equal signature values."""
    return (sig[a] == sig[b]).mean(axis=1)


def earliest_of_cluster(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """For each row, the earliest row of its connected component over the edges (a, b)."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]  # path halving
            x = parent[x]
        return x

    for x, y in zip(a.tolist(), b.tolist()):
        rx, ry = find(x), find(y)
        if rx != ry:  # the smaller index becomes the root: the root is the earliest row
            parent[max(rx, ry)] = min(rx, ry)
    return np.array([find(x) for x in range(n)], dtype=np.int64)


class NearDedupParams(Params):
    # Estimated Jaccard similarity of shingle sets at or above which two rows are duplicates:
    # with 5-word shingles, 0.8 is about one or two words changed per hundred.
    threshold: float = Field(0.8, gt=0, lt=1)
    # Word 5-grams: a changed word spoils only 5 shingles, while phrases every trace shares
    # ("so the answer is") are too short to make different texts look alike.
    shingle_size: int = Field(5, ge=1, le=_MAX_NGRAM)
    # 128 permutations: the Jaccard estimate's standard error is about 0.035 at 0.8.
    num_perm: int = Field(128, ge=16, le=1024)
    on: On = "completion"  # the text a student learns from; samples of one prompt share the prompt
    seed: int = 0  # the hash permutations

    @model_validator(mode="after")
    def _bands_exist(self) -> NearDedupParams:
        try:
            lsh_bands(self.threshold, self.num_perm)
        except ValueError:
            raise ValueError(f"threshold {self.threshold} with num_perm {self.num_perm} leaves fewer than "
                             "2 LSH bands; lower the threshold or raise num_perm") from None
        return self


@contextlib.contextmanager
def _quiet_ray_data():
    """Ray Data without progress bars or execution logs, and a task-based shuffle; restored afterwards."""
    import ray.data
    from ray.data.context import ShuffleStrategy

    ctx = ray.data.DataContext.get_current()
    names = ("enable_progress_bars", "enable_operator_progress_bars", "print_on_execution_start", "shuffle_strategy")
    saved = {k: getattr(ctx, k) for k in names}
    # Ray Data logs each execution at INFO, and warns once that its progress bars are off.
    logs = [logging.getLogger("ray.data"), logging.getLogger("ray.data._internal.progress")]
    levels = [log.level for log in logs]
    for k in names[:3]:
        setattr(ctx, k, False)
    # The band rows are small (24 bytes a row and band): a sort shuffle in plain tasks groups them
    # faster than the hash shuffle, which starts aggregator actors for every groupby.
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    logs[0].setLevel(logging.WARNING)
    logs[1].setLevel(logging.ERROR)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)
        for log, level in zip(logs, levels):
            log.setLevel(level)


def _ensure_ray() -> None:
    import ray

    if not ray.is_initialized():  # the pipeline starts Ray (on the recipe's cluster) before filters
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")


def _sign_batch(batch: dict, shingle_size: int, a: np.ndarray, b: np.ndarray, bands: int, rows: int) -> dict:
    sig = minhash_signatures([str(t) for t in batch["text"]], shingle_size, a, b)
    return {"idx": batch["idx"], "sig": sig, "keys": band_keys(sig, bands, rows),
            "has_words": sig[:, 0] != _NO_WORDS}


def _band_rows(batch: dict, parts: int) -> dict:
    keep = batch["has_words"]
    keys, idx = batch["keys"][keep], batch["idx"][keep]
    flat = keys.reshape(-1)
    return {"part": (flat % np.uint64(parts)).astype(np.int64), "key": flat,
            "idx": np.repeat(idx, keys.shape[1])}


def _group_pairs(group: dict) -> dict:
    a, b = bucket_pairs(group["key"], group["idx"])
    return {"a": a, "b": b}


def _near_duplicate_pairs(texts: list[str], p: NearDedupParams,
                          progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures, earlier, later): every distinct pair of rows sharing an LSH bucket."""
    import pyarrow as pa
    import ray

    _ensure_ray()
    bands, rows = lsh_bands(p.threshold, p.num_perm)
    a, b = permutations(p.num_perm, p.seed)
    n = len(texts)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    block = max(1_000, -(-n // (4 * cpus)))  # a few blocks per CPU
    # One table per block: a slice of one big table would ship the whole table with each block.
    tables = [pa.table({"idx": np.arange(lo, min(n, lo + block), dtype=np.int64),
                        "text": pa.array(texts[lo : lo + block], pa.large_string())}) for lo in range(0, n, block)]
    with _quiet_ray_data():
        ds = ray.data.from_arrow(tables)
        signed = ds.map_batches(_sign_batch, batch_format="numpy", batch_size=2048, fn_kwargs={
            "shingle_size": p.shingle_size, "a": a, "b": b, "bands": bands, "rows": rows}).materialize()
        sig = np.empty((n, p.num_perm), np.uint32)
        for batch in signed.select_columns(["idx", "sig"]).iter_batches(batch_format="numpy", batch_size=8192):
            sig[batch["idx"]] = batch["sig"]
            if progress is not None:
                progress.advance(len(batch["idx"]))
        parts = 2 * cpus  # each group holds every bucket of one part: a few groups, each vectorised
        pairs = (signed.map_batches(_band_rows, batch_format="numpy", fn_kwargs={"parts": parts})
                 .groupby("part", num_partitions=parts).map_groups(_group_pairs, batch_format="numpy"))
        found = [(x["a"], x["b"]) for x in pairs.iter_batches(batch_format="numpy", batch_size=None)]
    lo = np.concatenate([f[0] for f in found] or [np.empty(0, np.int64)]).astype(np.int64)
    hi = np.concatenate([f[1] for f in found] or [np.empty(0, np.int64)]).astype(np.int64)
    code = np.unique(lo * n + hi)  # a pair found in several bands counts once
    return sig, code // n, code % n


@FILTERS.register("near-dedup", params=NearDedupParams, example="""
filters:
  - name: near-dedup
    mode: drop
    on: completion            # or prompt, prompt+completion
    threshold: 0.8            # estimated Jaccard of word 5-gram sets
    shingle_size: 5
    num_perm: 128
    seed: 0
""")
def near_dedup(rows: list[dict], params: NearDedupParams, ctx: FilterContext) -> list[FilterVerdict]:
    """Rows whose text nearly repeats an earlier row's (MinHash-LSH on Ray Data); the first is kept."""
    if not rows:
        return []
    if ctx.progress is not None:
        ctx.progress.start(total=len(rows))
    texts = [row_text(r, params.on) for r in rows]
    sig, lo, hi = _near_duplicate_pairs(texts, params, ctx.progress)
    similar = jaccard(sig, lo, hi) >= params.threshold
    root = earliest_of_cluster(len(rows), lo[similar], hi[similar])
    flagged = np.flatnonzero(root != np.arange(len(rows)))
    scores = dict(zip(flagged.tolist(), jaccard(sig, flagged, root[flagged]).tolist()))
    out = []
    for i, row in enumerate(rows):
        if i in scores:
            kept = rows[root[i]]["sample_id"]
            out.append(FilterVerdict(True, f"near-duplicate of {kept} (jaccard {scores[i]:.2f})", "near-duplicate"))
        else:
            out.append(FilterVerdict(False))
    return out
