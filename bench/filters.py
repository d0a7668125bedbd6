"""Records/s of the near-dedup and decontaminate filters against plain baselines, at 100k and
200k records: the filters should scale linearly (200k takes at most 2.2 times as long as 100k).

Records are synthetic: a prompt and a completion of 50 to 150 words each, drawn from a
Zipf-weighted vocabulary with stock phrases and numbers. 10% of completions are planted near
duplicates of an earlier one (one word in ~100 changed: Jaccard 0.80 to 0.93 on 5-word shingles,
by length, so the shortest sit at the 0.8 threshold); 2% of prompts carry a question from one of
two 1,000-question benchmarks or from 200 eval prompts, verbatim, with one word changed (a name
or a number), or with its sentences reordered.

- near-dedup: the registered filter on Ray Data (local Ray, started and warmed up on 2,000
  records before timing). Baseline: datasketch MinHash per record and every pair of signatures
  compared without LSH (numpy, one row against all later rows), timed on a sample and
  extrapolated: signatures linearly, pairs quadratically.
- decontaminate: the registered filter. Baseline: every row's n-gram set against every
  question's (Python sets), timed on a sample and extrapolated linearly.
Each side runs in its own process (bench/sides.py).

    python bench/filters.py [--sizes 100000 200000] [--sample 4000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from sides import emit, run_side

COMMON = ("the of and to a in is that for it as with was on be by this are we so then at from or an not "
          "but have has had which one all they there if each more when can how many what number first "
          "next total left right sum value find step answer result because since two three half twice").split()
STOCK = ["let us think step by step", "so the answer is", "we can check this by adding them back",
         "first we find the total", "this means that", "putting it all together", "in other words",
         "now we subtract the two values"]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jun", "Kofi", "Lena"]
SIZES = (100_000, 200_000)
NEAR_SHARE, CONTAMINATED_SHARE = 0.10, 0.02


def vocabulary(rng: np.random.Generator, size: int = 4_000) -> tuple[np.ndarray, np.ndarray]:
    """Common words plus made-up ones from syllables, with Zipf-like weights."""
    syllables = ["ka", "lo", "mi", "ren", "ta", "vo", "sel", "dar", "qui", "po", "nem", "bra", "tu", "fen"]
    made = {"".join(rng.choice(syllables, size=rng.integers(2, 4))) for _ in range(3 * size)}
    words = np.array(COMMON + sorted(made)[: size - len(COMMON)] + [str(i) for i in range(200)], dtype=object)
    rng.shuffle(words[len(COMMON):])
    weights = 1.0 / (np.arange(len(words)) + 8.0)
    return words, weights / weights.sum()


def texts(rng: np.random.Generator, words, weights, count: int, lo: int, hi: int) -> list[str]:
    lengths = rng.integers(lo, hi + 1, size=count)
    ids = rng.choice(len(words), size=int(lengths.sum()), p=weights)
    ends = np.cumsum(lengths)
    out = []
    for k, (start, end) in enumerate(zip(ends - lengths, ends)):
        body = list(words[ids[start:end]])
        for _ in range(k % 3):  # 0 to 2 stock phrases: unrelated rows share some shingles
            body.insert(int(rng.integers(0, len(body))), STOCK[int(rng.integers(0, len(STOCK)))])
        out.append(" ".join(body))
    return out


def questions(seed: int, count: int) -> list[str]:
    """Benchmark-like questions: 2 or 3 sentences, a name and numbers, 25 to 60 words."""
    rng = np.random.default_rng(seed)
    words, weights = vocabulary(np.random.default_rng(7))
    out = []
    for _ in range(count):
        parts = texts(rng, words, weights, int(rng.integers(2, 4)), 8, 20)
        name = NAMES[int(rng.integers(0, len(NAMES)))]
        parts[0] = f"{name} has {int(rng.integers(2, 500))} {parts[0]}"
        out.append(". ".join(p.capitalize() for p in parts) + "?")
    return out


def reworded(question: str, rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return question
    if kind == 1:  # one word changed: the name or the number
        words = question.split()  # "<Name> has <number> ..."
        if rng.randrange(2):
            words[0] = rng.choice([x for x in NAMES if x != words[0]])
        else:
            words[2] = str(int(words[2]) + rng.randint(1, 9))
        return " ".join(words)
    sentences = question.rstrip("?").split(". ")
    return ". ".join(sentences[1:] + sentences[:1]) + "?"  # reordered


def shingles(text: str, n: int = 5) -> set:
    from distill.filters.ngrams import text_words

    w = text_words(text)
    return set(zip(*(w[k:] for k in range(n))))


def synthetic_records(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    words, weights = vocabulary(np.random.default_rng(7))
    prompts = texts(rng, words, weights, n, 50, 150)
    completions = texts(rng, words, weights, n, 50, 150)
    bench = {"bench-a": questions(1, 1_000), "bench-b": questions(2, 1_000)}
    eval_questions = questions(3, 200)
    pick = random.Random(seed)
    near = dict.fromkeys(pick.sample(range(1, n), int(NEAR_SHARE * n)), 0.0)  # row -> its true Jaccard
    for i in sorted(near):  # a copy of an earlier, unplanted completion with a word or two changed
        source = pick.randrange(i)
        while source in near:
            source = pick.randrange(i)
        copy = completions[source].split()
        for k in pick.sample(range(len(copy)), 1 + len(copy) // 100):
            copy[k] = f"edited{k}"
        completions[i] = " ".join(copy)
        a, b = shingles(completions[source]), shingles(completions[i])
        near[i] = len(a & b) / len(a | b)
    contaminated = {}
    pool = [(name, q) for name, qs in bench.items() for q in qs] + [("eval", q) for q in eval_questions]
    for i in pick.sample(range(n), int(CONTAMINATED_SHARE * n)):
        name, q = pool[pick.randrange(len(pool))]
        cut = pick.randint(10, 40)
        prompt = prompts[i].split()
        prompts[i] = " ".join(prompt[:cut]) + f". {reworded(q, pick)} " + " ".join(prompt[cut:])
        contaminated[i] = name
    rows = [{"sample_id": f"r{i:06d}", "prompt_id": f"p{i:06d}", "prompt_text": p, "completion": c,
             "finish_reason": "stop", "completion_tokens": len(c.split()), "prompt_source": "bench"}
            for i, (p, c) in enumerate(zip(prompts, completions))]
    return {"rows": rows, "bench": bench, "eval": eval_questions, "near": near, "contaminated": contaminated}


def near_dedup_side(size: int) -> dict:
    from distill.filters import FilterContext
    from distill.filters.dedup import NearDedupParams, near_dedup
    from distill.filters.minhash import lsh_bands

    data = synthetic_records(size)
    p = NearDedupParams()
    near_dedup(data["rows"][:2_000], p, FilterContext())  # starts Ray and its workers: not timed
    started = time.time()
    verdicts = near_dedup(data["rows"], p, FilterContext())
    seconds = time.time() - started
    flagged = {i for i, v in enumerate(verdicts) if v.flagged}
    clear = {i for i, j in data["near"].items() if j >= 0.85}  # clearly above the threshold
    return {"seconds": seconds, "found": len(flagged & data["near"].keys()), "planted": len(data["near"]),
            "found_clear": len(flagged & clear), "clear": len(clear), "others": len(flagged - data["near"].keys()),
            "bands": lsh_bands(p.threshold, p.num_perm)}


def near_dedup_baseline_side(sample: int) -> dict:
    from datasketch import MinHash

    from distill.filters.dedup import NearDedupParams
    from distill.filters.ngrams import text_words

    p = NearDedupParams()
    rows = synthetic_records(sample)["rows"]
    started = time.time()
    grams = []
    for row in rows:
        w = text_words(row["completion"])
        grams.append([" ".join(w[i : i + p.shingle_size]).encode() for i in range(len(w) - p.shingle_size + 1)])
    sig = np.stack([m.digest() for m in MinHash.bulk(grams, num_perm=p.num_perm, seed=p.seed)])
    per_record = (time.time() - started) / sample
    started = time.time()
    pairs = 0
    for i in range(sample - 1):
        _ = (sig[i + 1 :] == sig[i]).mean(axis=1) >= p.threshold
        pairs += sample - 1 - i
    return {"signature_seconds_per_record": per_record, "seconds_per_pair": (time.time() - started) / pairs,
            "sample": sample}


def decontaminate_side(size: int) -> dict:
    from distill.filters import FilterContext
    from distill.filters.decontaminate import DecontaminateParams, decontaminate

    data = synthetic_records(size)
    with tempfile.TemporaryDirectory() as tmp:
        specs = []
        for name, qs in data["bench"].items():
            (Path(tmp) / f"{name}.jsonl").write_text("".join(json.dumps({"question": q}) + "\n" for q in qs))
            specs.append({"name": name, "path": f"{name}.jsonl"})
        p = DecontaminateParams.model_validate({"benchmarks": specs}, context={"base_dir": tmp})
        ctx = FilterContext(base_dir=Path(tmp), eval_prompts=[{"question": q} for q in data["eval"]])
        started = time.time()
        verdicts = decontaminate(data["rows"], p, ctx)
        seconds = time.time() - started
    hits: dict[str, int] = {}
    for i, v in enumerate(verdicts):
        if v.flagged:
            key = v.category if data["contaminated"].get(i) == v.category else "wrong"
            hits[key] = hits.get(key, 0) + 1
    planted: dict[str, int] = {}
    for name in data["contaminated"].values():
        planted[name] = planted.get(name, 0) + 1
    return {"seconds": seconds, "hits": hits, "planted": planted}


def decontaminate_baseline_side(sample: int) -> dict:
    from distill.filters.decontaminate import DecontaminateParams
    from distill.filters.ngrams import text_words

    p = DecontaminateParams()
    data = synthetic_records(sample)
    qs = [q for group in data["bench"].values() for q in group] + data["eval"]

    def grams(text: str) -> set:
        w = text_words(text)
        return set(zip(*(w[k:] for k in range(p.n))))

    started = time.time()
    q_grams = [grams(q) for q in qs]
    for row in data["rows"]:
        g = grams(row["prompt_text"])
        _ = [len(q & g) / len(q) >= p.min_overlap for q in q_grams]
    return {"seconds_per_record": (time.time() - started) / sample, "sample": sample}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=list(SIZES))
    ap.add_argument("--sample", type=int, default=4_000, help="records the near-dedup baseline is timed on")
    ap.add_argument("--side", choices=["near-dedup", "near-dedup-baseline", "decontaminate", "decontaminate-baseline"],
                    help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        sides = {"near-dedup": lambda: near_dedup_side(args.size),
                 "near-dedup-baseline": lambda: near_dedup_baseline_side(args.size),
                 "decontaminate": lambda: decontaminate_side(args.size),
                 "decontaminate-baseline": lambda: decontaminate_baseline_side(args.size)}
        emit(sides[args.side]())
        return

    small, large = args.sizes
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    print(f"records: synthetic prompt + completion of 50-150 words each; {NEAR_SHARE:.0%} planted near-duplicate "
          f"completions, {CONTAMINATED_SHARE:.0%} prompts carrying a benchmark or eval question")

    nd = {n: run_side(__file__, "near-dedup", "--size", str(n)) for n in (small, large)}
    base = run_side(__file__, "near-dedup-baseline", "--size", str(args.sample))
    bands, rows = nd[small]["bands"]
    print(f"\nnear-dedup (threshold 0.8, 5-word shingles, 128 permutations, {bands} bands x {rows} rows), "
          f"Ray started and warmed up before timing")
    base_s = {n: base["signature_seconds_per_record"] * n + base["seconds_per_pair"] * n * (n - 1) / 2
              for n in (small, large)}
    for n in (small, large):
        r = nd[n]
        print(f"  {n:>7,} records: distill {r['seconds']:7.1f} s = {n / r['seconds']:8,.0f} records/s  "
              f"(flagged {r['found']:,}/{r['planted']:,} planted near-duplicates, {r['found_clear']:,}/{r['clear']:,} "
              f"of those with Jaccard >= 0.85; {r['others']:,} others) | "
              f"baseline ~{base_s[n]:9,.0f} s = {n / base_s[n]:6,.1f} records/s (extrapolated)")
    print(f"  baseline: datasketch MinHash per record + all-pairs signature comparison without LSH, timed on "
          f"{args.sample:,} records ({base['seconds_per_pair'] * 1e9:.0f} ns a pair) and extrapolated to the full size")
    print(f"  time ratio {large // 1000}k/{small // 1000}k: distill {nd[large]['seconds'] / nd[small]['seconds']:.2f} "
          f"(target <= 2.2), baseline {base_s[large] / base_s[small]:.2f}")

    dc = {n: run_side(__file__, "decontaminate", "--size", str(n)) for n in (small, large)}
    dsample = max(200, args.sample // 10)
    dbase = run_side(__file__, "decontaminate-baseline", "--size", str(dsample))
    print("\ndecontaminate (5-grams, min_overlap 0.5; 2 benchmarks x 1,000 questions + 200 eval prompts)")
    for n in (small, large):
        r = dc[n]
        per = ", ".join(f"{k} {r['hits'].get(k, 0):,}/{v:,}" for k, v in sorted(r["planted"].items()))
        wrong = r["hits"].get("wrong", 0)
        b = dbase["seconds_per_record"] * n
        print(f"  {n:>7,} records: distill {r['seconds']:7.1f} s = {n / r['seconds']:8,.0f} records/s  "
              f"(caught/planted: {per}; {wrong} other rows flagged) | "
              f"baseline ~{b:7,.0f} s = {n / b:6,.0f} records/s (extrapolated)")
    print(f"  baseline: every row's 5-gram set against every question's (Python sets), timed on {dsample:,} records "
          f"and extrapolated linearly")
    print(f"  time ratio {large // 1000}k/{small // 1000}k: distill {dc[large]['seconds'] / dc[small]['seconds']:.2f} "
          f"(target <= 2.2)")


if __name__ == "__main__":
    main()
