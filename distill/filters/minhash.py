"""MinHash-LSH in numpy, for near-dedup: signatures, LSH bands and buckets, and clusters of pairs.

Plain functions over arrays, with no Ray in them: near-dedup runs the per-row and per-band ones
on Ray Data (distill.filters.minhash_ray) and the pair checks on the driver.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from distill.filters.ngrams import POSITION_WEIGHTS, mix64, ngram_hashes, text_words

NO_WORDS = np.uint32(0xFFFFFFFF)  # the signature of a text without a word: matches nothing
_LSH_WEIGHTS = (0.1, 0.9)  # (false positives, false negatives) when choosing bands x rows
_BUCKET_WINDOW = 32  # in a band bucket, each row is checked against the next 32 rows only: linear time
_GRAMS_PER_CHUNK = 16_384  # shingles hashed at once: 16k x num_perm x 8 bytes of scratch memory


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The (a, b) of each hash permutation h(x) = (a x + b) >> 32, a odd."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    return a, rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)


def minhash_signatures(texts: list[str], shingle_size: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(texts), num_perm) uint32 MinHash signatures of the texts' word shingles."""
    grams, owner = ngram_hashes([text_words(t) for t in texts], shingle_size)
    sig = np.full((len(texts), len(a)), NO_WORDS, np.uint32)
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
    keys = (cut * POSITION_WEIGHTS[:rows]).sum(axis=2, dtype=np.uint64)
    keys += np.arange(bands, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    return mix64(keys)


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


def near_duplicate_roots(sig: np.ndarray, threshold: float) -> np.ndarray:
    """For each row, the earliest row of its near-duplicate cluster (itself when it has none),
    all in memory: for sets small enough not to need Ray (a log import's new calls and the
    store's signatures)."""
    n = len(sig)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    bands, rows = lsh_bands(threshold, sig.shape[1])
    has_words = np.flatnonzero(sig[:, 0] != NO_WORDS)
    keys = band_keys(sig[has_words], bands, rows).reshape(-1)
    lo, hi = bucket_pairs(keys, np.repeat(has_words, bands))
    code = np.unique(lo * n + hi)  # a pair found in several bands counts once
    lo, hi = code // n, code % n
    similar = jaccard(sig, lo, hi) >= threshold
    return earliest_of_cluster(n, lo[similar], hi[similar])
