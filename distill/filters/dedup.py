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

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.filters.minhash import earliest_of_cluster, jaccard, lsh_bands
from distill.filters.minhash_ray import candidate_pairs
from distill.filters.ngrams import MAX_NGRAM
from distill.registry import Params

On = Literal["completion", "prompt", "prompt+completion"]


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


class NearDedupParams(Params):
    # Estimated Jaccard similarity of shingle sets at or above which two rows are duplicates:
    # with 5-word shingles, 0.8 is about one or two words changed per hundred.
    threshold: float = Field(0.8, gt=0, lt=1)
    # Word 5-grams: a changed word spoils only 5 shingles, while phrases every trace shares
    # ("so the answer is") are too short to make different texts look alike.
    shingle_size: int = Field(5, ge=1, le=MAX_NGRAM)
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
    sig, lo, hi = candidate_pairs(texts, params.shingle_size, params.num_perm, params.threshold, params.seed,
                                  ctx.progress)
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
