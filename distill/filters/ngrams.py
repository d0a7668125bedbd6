"""Text as words and word n-gram hashes: how near-dedup and decontaminate read text.

Text is read as lower-case words and arithmetic operators, punctuation dropped. Each word
n-gram becomes a 64-bit hash that is the same in every process and every run, so hashes made
on different Ray workers, or in another run, can be compared.
"""

from __future__ import annotations

import re

import numpy as np

# Words, and the arithmetic operators: "3 + 5" and "3 - 5" are different questions.
_WORD = re.compile(r"\w+|[-+*/=<>^%]")
MAX_NGRAM = 32  # longest word n-gram hashed: the position weights below
# Fixed weights for a word's position inside an n-gram: the same n-gram hashes the same in every
# process and every run (Python's own hash() differs between Ray workers).
POSITION_WEIGHTS = np.random.default_rng(0x5EED).integers(1, 2**63, size=MAX_NGRAM, dtype=np.uint64) | np.uint64(1)


def mix64(x: np.ndarray) -> np.ndarray:
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
    if not 1 <= n <= MAX_NGRAM:
        raise ValueError(f"n-gram size {n} is outside 1..{MAX_NGRAM}")
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
        term = padded[j : j + total] * POSITION_WEIGHTS[j]
        term[pos + j >= end] = 0  # words past the doc's end do not count
        acc += term
    begin = end - np.repeat(lengths, lengths)
    keep = (pos + n <= end) | ((lengths[owner] < n) & (pos == begin))
    return mix64(acc[keep]), owner[keep]
