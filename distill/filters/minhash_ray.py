"""near-dedup's candidate pairs on Ray Data: signatures and band buckets on every node.

Signatures are computed in `map_batches`, a batch at a time; band rows are grouped with a
Ray Data groupby on a partition of the band hash, each group holding every bucket of its
partition. The driver collects the signatures (to check the pairs) and the pairs.
"""

from __future__ import annotations

import contextlib
import logging

import numpy as np

from distill.filters.minhash import NO_WORDS, band_keys, bucket_pairs, lsh_bands, minhash_signatures, permutations
from distill.ray_runtime import start_ray


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


def _sign_batch(batch: dict, shingle_size: int, a: np.ndarray, b: np.ndarray, bands: int, rows: int) -> dict:
    sig = minhash_signatures([str(t) for t in batch["text"]], shingle_size, a, b)
    return {"idx": batch["idx"], "sig": sig, "keys": band_keys(sig, bands, rows),
            "has_words": sig[:, 0] != NO_WORDS}


def _band_rows(batch: dict, parts: int) -> dict:
    keep = batch["has_words"]
    keys, idx = batch["keys"][keep], batch["idx"][keep]
    flat = keys.reshape(-1)
    return {"part": (flat % np.uint64(parts)).astype(np.int64), "key": flat,
            "idx": np.repeat(idx, keys.shape[1])}


def _group_pairs(group: dict) -> dict:
    a, b = bucket_pairs(group["key"], group["idx"])
    return {"a": a, "b": b}


def candidate_pairs(texts: list[str], shingle_size: int, num_perm: int, threshold: float, seed: int,
                    progress=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures, earlier, later): every distinct pair of rows sharing an LSH bucket.

    `progress` advances by the rows whose signatures have reached the driver."""
    import pyarrow as pa
    import ray

    start_ray("local")  # the pipeline starts Ray (on the recipe's cluster) before filters
    bands, rows = lsh_bands(threshold, num_perm)
    a, b = permutations(num_perm, seed)
    n = len(texts)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    block = max(1_000, -(-n // (4 * cpus)))  # a few blocks per CPU
    # One table per block: a slice of one big table would ship the whole table with each block.
    tables = [pa.table({"idx": np.arange(lo, min(n, lo + block), dtype=np.int64),
                        "text": pa.array(texts[lo : lo + block], pa.large_string())}) for lo in range(0, n, block)]
    with _quiet_ray_data():
        ds = ray.data.from_arrow(tables)
        signed = ds.map_batches(_sign_batch, batch_format="numpy", batch_size=2048, fn_kwargs={
            "shingle_size": shingle_size, "a": a, "b": b, "bands": bands, "rows": rows}).materialize()
        sig = np.empty((n, num_perm), np.uint32)
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
