import random
import subprocess
import sys

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from support.progress import CountingBar
from distill.filters import FILTERS, FilterContext
from distill.filters.dedup import ExactDedupParams, NearDedupParams, exact_dedup, near_dedup
from distill.filters.minhash import (bucket_pairs, earliest_of_cluster, lsh_bands, minhash_signatures,
                                    near_duplicate_roots, permutations)
from distill.filters.ngrams import ngram_hashes, text_words
from distill.recipe import RecipeLoader

WORDS = ("the a of to and in is it that for we so then add carry sum check answer number two three "
         "first next step total each more less left right value find result count both half").split()


def rows_of(pairs: list[tuple[str, str]]) -> list[dict]:
    return [{"sample_id": f"s{i}", "prompt_id": f"p{i}", "prompt_text": p, "completion": c, "finish_reason": "stop",
             "completion_tokens": 1, "prompt_source": "test"} for i, (p, c) in enumerate(pairs)]


def flags(verdicts) -> list[int]:
    return [i for i, v in enumerate(verdicts) if v.flagged]


def prose(rng: random.Random, words: int) -> list[str]:
    return [rng.choice(WORDS) + str(rng.randint(0, 40)) for _ in range(words)]  # ~1,300 distinct words


def edit(words: list[str], changes: int, rng: random.Random) -> list[str]:
    out = list(words)
    for k in rng.sample(range(len(out)), changes):
        out[k] = f"changed{k}"
    return out


@pytest.mark.parametrize(
    "pairs, params, flagged, reasons",
    [
        ([("q", "Four."), ("q", "Four."), ("q", "Five.")], {}, [1], ["exact duplicate of s0"]),
        # Normalised: whitespace runs and case do not count, unless normalize is off.
        ([("q", "The answer is 4."), ("q", "the  answer is\n4.")], {}, [1], ["exact duplicate of s0"]),
        ([("q", "The answer is 4."), ("q", "the  answer is\n4.")], {"normalize": False}, [], []),
        ([("q", "a"), ("r", "a"), ("q", "a"), ("q", "a")], {}, [2, 3], ["exact duplicate of s0"] * 2),
        # What is compared: prompt and completion by default, or either one.
        ([("q", "a"), ("r", "a")], {"on": "completion"}, [1], ["exact duplicate of s0"]),
        ([("q", "a"), ("q", "b")], {"on": "prompt"}, [1], ["exact duplicate of s0"]),
        ([("ab", "c"), ("a", "bc")], {}, [], []),  # the boundary between prompt and completion counts
        ([("q", ""), ("q", "")], {}, [1], ["exact duplicate of s0"]),
        ([], {}, [], []),
    ],
)
def test_exact_dedup(pairs, params, flagged, reasons):
    verdicts = exact_dedup(rows_of(pairs), ExactDedupParams(**params), FilterContext())
    assert flags(verdicts) == flagged
    assert [v.reason for v in verdicts if v.flagged] == reasons
    assert {v.category for v in verdicts if v.flagged} <= {"exact-duplicate"}


@pytest.mark.parametrize(
    "text, words",
    [
        ("The Answer is 42.", ["the", "answer", "is", "42"]),
        ("What is 3 + 5? And 3 - 5?", ["what", "is", "3", "+", "5", "and", "3", "-", "5"]),
        ("  ", []),
        ("Ça coûte 5€", ["ça", "coûte", "5"]),
    ],
)
def test_text_words(text, words):
    assert text_words(text) == words


def test_ngram_hashes_per_doc():
    docs = [["a", "b", "c", "d"], [], ["a", "b"], ["x", "a", "b", "c"]]
    grams, owner = ngram_hashes(docs, 3)
    assert owner.tolist() == [0, 0, 2, 3, 3]  # a doc shorter than n is one n-gram; no words, none
    assert grams[0] == grams[4]  # "a b c" in docs 0 and 3
    assert grams[2] == ngram_hashes([["a", "b"]], 2)[0][0]  # a short doc hashes as its own n-gram
    assert grams[2] != ngram_hashes([["b", "a"]], 2)[0][0]  # order counts
    assert len(set(grams.tolist())) == 4


def test_ngram_hashes_are_the_same_in_another_process():
    # Ray workers are other processes: Python's own str hash would differ there.
    code = ("from distill.filters.ngrams import ngram_hashes; "
            "print(ngram_hashes([['so', 'the', 'sum', 'is']], 2)[0].tolist())")
    here = ngram_hashes([["so", "the", "sum", "is"]], 2)[0].tolist()
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert there.strip() == str(here)


@pytest.mark.parametrize("changes", [0, 2, 5, 10, 30, 100])
def test_signatures_estimate_jaccard(changes):
    rng = random.Random(changes)
    base = prose(rng, 150)
    other = edit(base, changes, rng)
    shingles = [{tuple(w[i : i + 5]) for i in range(len(w) - 4)} for w in (base, other)]
    true = len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1])
    a, b = permutations(256, seed=0)
    sig = minhash_signatures([" ".join(base), " ".join(other)], 5, a, b)
    assert abs((sig[0] == sig[1]).mean() - true) < 0.08  # about 3 standard errors at 256 permutations


def test_near_duplicate_roots_in_memory():
    rng = random.Random(7)
    base, other = prose(rng, 150), prose(rng, 150)
    texts = [" ".join(base), " ".join(other), "", " ".join(edit(base, 1, rng)), " ".join(edit(base, 60, rng)), ""]
    a, b = permutations(128, seed=0)
    roots = near_duplicate_roots(minhash_signatures(texts, 5, a, b), 0.8)
    # one word changed joins the first text; sixty do not; texts without words match nothing, not even each other
    assert roots.tolist() == [0, 1, 2, 0, 4, 5]
    assert near_duplicate_roots(minhash_signatures(texts[:1], 5, a, b), 0.8).tolist() == [0]


@pytest.mark.parametrize("threshold, num_perm", [(0.8, 128), (0.7, 128), (0.9, 64), (0.5, 256)])
def test_lsh_bands_find_pairs_above_the_threshold(threshold, num_perm):
    bands, rows = lsh_bands(threshold, num_perm)
    assert bands >= 2 and bands * rows <= num_perm
    chance = lambda s: 1 - (1 - s**rows) ** bands  # a pair of similarity s shares at least one band
    assert chance(threshold + 0.05) > 0.95 and chance(threshold - 0.4) < 0.02


@pytest.mark.parametrize(
    "keys, idx, window, pairs",
    [
        ([7, 3, 7, 3, 9], [0, 1, 2, 3, 4], 32, {(0, 2), (1, 3)}),
        ([5, 5, 5], [10, 2, 7], 32, {(2, 7), (2, 10), (7, 10)}),
        ([5, 5, 5, 5], [0, 1, 2, 3], 1, {(0, 1), (1, 2), (2, 3)}),  # a large bucket: neighbours only
        ([1, 2, 3], [0, 1, 2], 32, set()),
    ],
)
def test_bucket_pairs(keys, idx, window, pairs):
    lo, hi = bucket_pairs(np.array(keys, np.uint64), np.array(idx), window)
    assert set(zip(lo.tolist(), hi.tolist())) == pairs


@pytest.mark.parametrize(
    "n, edges, roots",
    [
        (4, [], [0, 1, 2, 3]),
        (5, [(3, 4), (1, 3)], [0, 1, 2, 1, 1]),
        (5, [(2, 4), (0, 4), (1, 3)], [0, 1, 0, 1, 0]),
    ],
)
def test_earliest_of_cluster(n, edges, roots):
    a = np.array([e[0] for e in edges], np.int64)
    b = np.array([e[1] for e in edges], np.int64)
    assert earliest_of_cluster(n, a, b).tolist() == roots


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"threshold": 1.0}, "less than 1"),
        ({"threshold": 0}, "greater than 0"),
        ({"threshold": 0.99, "num_perm": 16}, "fewer than 2 LSH bands"),
        ({"shingle_size": 0}, "greater than or equal to 1"),
        ({"on": "answer"}, "'completion', 'prompt' or 'prompt\\+completion'"),
        ({"treshold": 0.8}, "Extra inputs are not permitted"),
    ],
)
def test_near_dedup_invalid_params(spec, message):
    with pytest.raises(ValidationError, match=message):
        NearDedupParams(**spec)


@pytest.mark.parametrize("name, params", [("exact-dedup", ExactDedupParams), ("near-dedup", NearDedupParams)])
def test_registered(name, params):
    entry = FILTERS.get(name)
    assert entry.params is params and entry.summary and "\n" not in entry.summary
    [spec] = yaml.load(entry.example, Loader=RecipeLoader)["filters"]
    assert spec.pop("name") == name and spec.pop("mode") in ("drop", "mark")
    params(**spec)


def test_near_dedup_of_nothing_needs_no_ray():
    assert near_dedup([], NearDedupParams(), FilterContext()) == []


@pytest.fixture(scope="module")
def ray_cleanup():
    yield  # near_dedup starts Ray itself the first time
    import ray

    ray.shutdown()


@pytest.mark.slow
def test_near_dedup_on_ray(ray_cleanup):
    rng = random.Random(0)
    texts = [prose(rng, rng.randint(120, 200)) for _ in range(40)]
    # (index in the batch, text) of the planted rows; the rest are distinct texts.
    planted = {
        40: edit(texts[3], 1, rng),  # one word in ~150 changed
        41: edit(texts[7], 3, rng)[:-5],  # three words changed and the end cut
        42: texts[9] + ["and", "so", "on"],  # words added
        43: list(texts[3]),  # a second copy of row 3, exact
        44: edit(texts[11], 60, rng),  # too many changes: a different text
        45: [],  # no words: never a duplicate
        46: [],
        47: edit(texts[12][:100], 1, rng),  # shorter texts too
    }
    all_texts = [" ".join(t) for t in texts] + [" ".join(planted[k]) for k in sorted(planted)]
    all_texts[12] = " ".join(texts[12][:100])
    rows = rows_of([("q", t) for t in all_texts])
    verdicts = near_dedup(rows, NearDedupParams(), FilterContext())
    assert len(verdicts) == len(rows)
    kept_of = {i: v.reason.split()[2] for i, v in enumerate(verdicts) if v.flagged}
    assert kept_of == {40: "s3", 41: "s7", 42: "s9", 43: "s3", 47: "s12"}  # the first row of each cluster is kept
    assert {v.category for v in verdicts if v.flagged} == {"near-duplicate"}
    assert verdicts[43].reason == "near-duplicate of s3 (jaccard 1.00)"
    jaccard = float(verdicts[40].reason.rsplit(" ", 1)[1].rstrip(")"))
    assert 0.85 <= jaccard < 1


@pytest.mark.slow
def test_near_dedup_keeps_input_order_and_reads_the_chosen_field(ray_cleanup):
    rng = random.Random(1)
    a, b, c = (" ".join(prose(rng, 150)) for _ in range(3))
    # The duplicate comes first in the batch this time: it is the one kept.
    rows = rows_of([("q", c), ("q", b), ("q", a), ("q", b), ("x", a)])
    assert [v.reason for v in near_dedup(rows, NearDedupParams(), FilterContext())] == [
        "", "", "", "near-duplicate of s1 (jaccard 1.00)", "near-duplicate of s2 (jaccard 1.00)"]
    # Samples of one prompt share it: on the prompt they are all duplicates of the first.
    rows = rows_of([(a, "1"), (a, "2"), (c, "3"), (a, "4")])
    assert flags(near_dedup(rows, NearDedupParams(on="prompt"), FilterContext())) == [1, 3]
    assert flags(near_dedup(rows, NearDedupParams(on="completion"), FilterContext())) == []


@pytest.mark.slow
def test_near_dedup_reports_progress(ray_cleanup):
    bar = CountingBar()
    near_dedup(rows_of([("q", f"text number {i}") for i in range(30)]), NearDedupParams(), FilterContext(progress=bar))
    assert bar.total == bar.done == 30
