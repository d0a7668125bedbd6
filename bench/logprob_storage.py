"""Bytes per generated token of the teacher's stored top-k log-probabilities (samples/logprobs/),
for k = 8 and k = 20: distill's packed layout against plain Parquet lists.

- packed: distill's LOGPROBS_SCHEMA rows (distill/training/logits.py), one row per sample, as the
  sample stage writes them (zstd): ids as uint16, log-probabilities as 1/512-nat fixed point,
  each position's top-k as the first value then the drops from one to the next, a generated
  token found in its top-k as its place there.
- plain: the same per sample as Parquet lists, ids int64 and log-probabilities float32
  (token_ids, token_logprobs, top_ids as a list of lists, top_logprobs likewise), with Parquet's
  default compression (snappy) and with zstd.
- arrays: the same as int64 and float32 numbers with no file format or compression, for scale.
Both Parquet layouts hold the same samples with the same sample ids; bytes are whole Parquet files.

The data is synthetic unless --run names a run directory with stored log-probabilities (its
samples are re-stored both ways, at each k up to the stored one). Synthetic positions follow
what a chat model's next-token distributions look like: about two in three are confident
(top-1 probability from Beta(30, 1)), the rest spread (Beta(2, 2)); the remaining mass falls
off by rank as a Zipf law (exponent 1.0-1.8, over a 49,152-token vocabulary, SmolLM2's) with
30% log-normal noise; ids lean to small numbers (frequent tokens come first in a BPE
vocabulary); the sampled token is drawn from that distribution. Completions are 20-400 tokens.

    python bench/logprob_storage.py [--samples 2000] [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.training.logits import TeacherTokens, decode, table  # noqa: E402

VOCAB = 49_152
PLAIN_SCHEMA = pa.schema([
    ("sample_id", pa.string()),
    ("token_ids", pa.list_(pa.int64())),
    ("token_logprobs", pa.list_(pa.float32())),
    ("top_ids", pa.list_(pa.list_(pa.int64()))),
    ("top_logprobs", pa.list_(pa.list_(pa.float32()))),
])


def synthetic(samples: int, k: int, seed: int = 0) -> list[tuple[str, TeacherTokens]]:
    rng = np.random.default_rng(seed)
    exponents = np.round(np.linspace(1.0, 1.8, 33), 3)
    ranks = np.arange(2, VOCAB + 1, dtype=np.float64)
    zipf = {s: ranks ** -s / np.sum(ranks ** -s) for s in exponents}  # mass share of ranks 2..V
    out = []
    for i in range(samples):
        n = int(rng.integers(20, 401))
        confident = rng.random(n) < 0.65
        p1 = np.where(confident, rng.beta(30, 1, n), rng.beta(2, 2, n))
        share = np.stack([zipf[s][: k + 7] for s in rng.choice(exponents, n)])  # ranks 2..k+8, re-sorted below
        probs = np.concatenate([p1[:, None], share * (1 - p1)[:, None]], axis=1)
        probs *= rng.lognormal(0, 0.3, probs.shape)
        probs = -np.sort(-probs, axis=1)
        probs /= np.maximum(1.0, probs.sum(1, keepdims=True))
        top = probs[:, :k]
        ids = _frequent_ids(rng, n, k)
        tail = np.clip(1 - top.sum(1), 0, 1)
        sampled_rank = np.array([rng.choice(k + 1, p=np.append(t, r) / (t.sum() + r)) for t, r in zip(top, tail)])
        inside = sampled_rank < k
        token_ids = np.where(inside, ids[np.arange(n), np.minimum(sampled_rank, k - 1)], rng.integers(0, VOCAB, n))
        token_lp = np.where(inside, np.log(top[np.arange(n), np.minimum(sampled_rank, k - 1)]),
                            np.log(top[:, -1]) - rng.exponential(1.0, n))
        out.append((f"sample-{i:06d}", TeacherTokens(token_ids, token_lp.astype(np.float32), ids,
                                                     np.log(top).astype(np.float32))))
    return out


def _frequent_ids(rng, n: int, k: int) -> np.ndarray:
    """k distinct ids per position, leaning to small ids."""
    ids = np.empty((n, k), np.int64)
    candidates = np.minimum((VOCAB * rng.random((n, 4 * k)) ** 3).astype(np.int64), VOCAB - 1)
    for i in range(n):
        _, first = np.unique(candidates[i], return_index=True)
        pick = candidates[i][np.sort(first)][:k]
        while len(pick) < k:
            extra = rng.integers(0, VOCAB)
            if extra not in pick:
                pick = np.append(pick, extra)
        ids[i] = pick
    return ids


def from_run(run_dir: Path, k: int) -> list[tuple[str, TeacherTokens]]:
    from distill.run import RunDir

    rows, _ = RunDir(run_dir).read_logprobs()
    out = []
    for sid, row in sorted(rows.items()):
        t = decode(row)
        if t.k < k:
            raise SystemExit(f"{run_dir}: stored k is {t.k}, below {k}")
        out.append((sid, TeacherTokens(t.token_ids, t.token_logprobs, t.top_ids[:, :k], t.top_logprobs[:, :k])))
    return out


def parquet_bytes(tbl: pa.Table, compression: str) -> int:
    buf = io.BytesIO()
    pq.write_table(tbl, buf, compression=compression)
    return buf.tell()


def plain(rows: list[tuple[str, TeacherTokens]]) -> pa.Table:
    return pa.Table.from_pylist([{"sample_id": sid, "token_ids": t.token_ids.tolist(),
                                  "token_logprobs": t.token_logprobs.tolist(), "top_ids": t.top_ids.tolist(),
                                  "top_logprobs": t.top_logprobs.tolist()} for sid, t in rows], schema=PLAIN_SCHEMA)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--run", type=Path, help="a run directory with stored log-probabilities")
    args = parser.parse_args()
    print(f"data: {'run ' + str(args.run) if args.run else f'synthetic, {args.samples} samples'}")
    print(f"{'k':>3} {'tokens':>9} {'packed zstd':>12} {'packed snappy':>14} {'plain snappy':>13} "
          f"{'plain zstd':>11} {'arrays':>7} {'plain/packed':>13}  (bytes per token)")
    for k in (8, 20):
        rows = from_run(args.run, k) if args.run else synthetic(args.samples, k, seed=k)
        n = sum(t.n for _, t in rows)
        packed = table(rows)
        sizes = {"packed zstd": parquet_bytes(packed, "zstd"), "packed snappy": parquet_bytes(packed, "snappy"),
                 "plain snappy": parquet_bytes(plain(rows), "snappy"), "plain zstd": parquet_bytes(plain(rows), "zstd")}
        per = {name: size / n for name, size in sizes.items()}
        arrays = k * (8 + 4) + 8 + 4  # the same as int64 and float32 arrays in memory, uncompressed
        print(f"{k:>3} {n:>9} {per['packed zstd']:>12.2f} {per['packed snappy']:>14.2f} {per['plain snappy']:>13.2f} "
              f"{per['plain zstd']:>11.2f} {arrays:>7} {per['plain snappy'] / per['packed zstd']:>12.1f}x")


if __name__ == "__main__":
    main()
