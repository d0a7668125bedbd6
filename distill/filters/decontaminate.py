"""decontaminate: flag rows whose prompt contains a benchmark question, verbatim or lightly reworded.

Text is read as lower-case words (and arithmetic operators) without punctuation. Each benchmark
question becomes its set of word n-grams; a row is contaminated by a question when the row holds
at least `min_overlap` of the question's n-grams. N-grams shared by many of a benchmark's
questions (a template, an appended instruction) are not counted: they say nothing about which
question. A row holding all of a question's n-grams holds the question; a row holding only part
of them must hold at least two, and one that no more than two distinct questions of the
benchmark hold. One shared n-gram, or only phrases the benchmark repeats ("what's the weather
like", in seven BFCL requests) with another city after them, make a question of the same kind,
not a reworded copy.

A question shorter than n words is one n-gram of all its words, so it is found only whole: as
the whole text, or inside a longer one ("Please define entropy, in one sentence." holds "Define
entropy."). Inside a longer text only if one of its words is rare in its benchmark, used by
fewer than 3 distinct questions: a short question made of words the benchmark uses everywhere
("on", "help", "how are you today", as in BFCL's live_irrelevance set) is ordinary language,
in any text, and is found only when it is the whole text compared.

For a conversation the prompt text is its last user turn (the filter stage's `prompt_text`):
system turns and the tools' definitions are never compared. One index from n-gram hash to the
questions that hold it is built once; each row is then hashed and looked up in numpy, a chunk
of rows at a time: linear in the rows.

Benchmarks are files (JSON Lines, a JSON array of objects, or Parquet) with the question in one
field, plus, by default, the recipe's own held-out eval prompts (benchmark name "eval"). A flagged
row's category is the benchmark's name, so the filter stage counts hits per benchmark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from distill.filters import FILTERS, FilterContext, FilterVerdict
from distill.filters.ngrams import ngram_hashes, text_words
from distill.registry import Params

Format = Literal["jsonl", "json", "parquet"]
_SUFFIX_FORMAT: dict[str, Format] = {".jsonl": "jsonl", ".json": "json", ".parquet": "parquet"}
_ROWS_PER_CHUNK = 4_096  # rows hashed and looked up at once
_QUOTE_CHARS = 60  # of a question, in a reason
_COMMON_MIN_QUESTIONS = 3  # an n-gram two questions share is evidence, not template text
# A short question is found inside a longer text only with a word fewer questions use than this.
_EVERYDAY_WORD_QUESTIONS = 3
_MIN_SHARED = 2  # n-grams a row holding part of a question must share with it


class Benchmark(Params):
    name: str = Field(min_length=1)  # what flagged rows are counted by
    # A file of questions (relative to the recipe file), or `bfcl`: every request of the
    # single-turn BFCL test sets shipped in the bfcl-eval package (distill/prompts/bfcl.py).
    path: str | None = None
    shipped: Literal["bfcl"] | None = None
    field: str = "question"
    format: Format | None = None  # None: from the suffix (.jsonl, .json, .parquet)

    @field_validator("path")
    @classmethod
    def _exists(cls, v: str | None, info: ValidationInfo) -> str | None:
        full = Path((info.context or {}).get("base_dir", ".")) / (v or "")
        if v is not None and not full.is_file():
            raise ValueError(f"file not found (looked for {full}; paths are relative to the recipe file)")
        return v

    @model_validator(mode="after")
    def _format_known(self) -> Benchmark:
        if (self.path is None) == (self.shipped is None):
            raise ValueError("give a benchmark either path: (a file of questions) or shipped: bfcl")
        if self.shipped is None and self.format is None and Path(self.path).suffix.lower() not in _SUFFIX_FORMAT:
            raise ValueError(f"cannot tell the format of {self.path!r} from its suffix; "
                             f"set format: {', '.join(_SUFFIX_FORMAT.values())}")
        return self

    @property
    def file_format(self) -> Format:
        return self.format or _SUFFIX_FORMAT[Path(self.path).suffix.lower()]


class DecontaminateParams(Params):
    on: Literal["prompt", "completion", "both"] = "prompt"
    benchmarks: list[Benchmark] = []
    include_eval: bool = True  # the recipe's own eval prompts, as benchmark "eval"
    # Word 5-grams: a changed name or number spoils only the 5 n-grams around it, and a swapped
    # clause the few that cross its edges, so a reworded question keeps most of its n-grams
    # (with 8-grams a reordered one keeps 0.31); stock phrases shorter than 5 words ("how many
    # apples does") do not count by themselves.
    n: int = Field(5, ge=1, le=32)
    # Half of a question's n-grams. In the tests a changed name, a changed number or a reordered
    # clause each keeps 0.59 or more of them, different questions of the same kind share 0.07
    # at most; all three rewordings at once keep 0.37 to 0.59, found with min_overlap 0.35.
    min_overlap: float = Field(0.5, gt=0, le=1)
    # An n-gram in more than this share of one benchmark's questions (and in 3 or more) is
    # template text, like the instruction every generated question ends with, and is not
    # counted: otherwise every question of a template matches every other. 1.0 counts them all,
    # and then a row holding part of a question needs no n-gram that few questions hold.
    common_share: float = Field(0.05, gt=0, le=1)

    @model_validator(mode="after")
    def _names(self) -> DecontaminateParams:
        names = [b.name for b in self.benchmarks] + (["eval"] if self.include_eval else [])
        if dup := sorted({n for n in names if names.count(n) > 1}):
            why = " ('eval' is the recipe's eval prompts while include_eval is true)" if "eval" in dup else ""
            raise ValueError(f"benchmark name(s) {', '.join(map(repr, dup))} used twice{why}")
        if not names:
            raise ValueError("nothing to check against: list benchmarks or set include_eval: true")
        return self


def read_questions(bench: Benchmark, base_dir: Path) -> list[str]:
    """The benchmark's questions, in file order."""
    if bench.shipped == "bfcl":
        from distill.prompts import bfcl

        every = bfcl.BfclParams(categories=list(bfcl.Category.__args__))
        return [row["question"] for row in bfcl.read_bfcl(every)]
    path = base_dir / bench.path
    fmt = bench.file_format
    if fmt == "parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    elif fmt == "json":
        rows = json.loads(path.read_text())
        if not isinstance(rows, list):
            raise ValueError(f"{bench.path}: a JSON file of questions must hold an array of objects")
    else:
        rows = []
        with path.open() as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{bench.path}:{n}: not valid JSON: {e}") from None
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or row.get(bench.field) is None:
            fields = ", ".join(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{bench.path}: row {i} has no field {bench.field!r} (fields: {fields}); "
                             f"set field: to the one holding the question")
        out.append(str(row[bench.field]))
    return out


@dataclass
class QuestionIndex:
    """n-gram hash -> the questions holding it (keys sorted; question ids in CSR form)."""

    keys: np.ndarray  # uint64, sorted, unique
    start: np.ndarray  # question ids of keys[k]: qid[start[k]:start[k + 1]]
    qid: np.ndarray
    size: np.ndarray  # n-grams per question (1 for a question shorter than n)
    # The word counts below n of the short questions that may be found inside a longer text:
    # the row m-grams to look up.
    short: list[int]
    questions: list[tuple[str, str]]  # (benchmark, question text) by question id
    # Per entry of qid: a short question of everyday words, found only as a whole text.
    whole_only: np.ndarray | None = None
    # Per entry of qid: the n-gram is held by fewer than _COMMON_MIN_QUESTIONS distinct questions
    # of the question's benchmark, so it tells which question.
    telling: np.ndarray | None = None

    @classmethod
    def build(cls, questions: list[tuple[str, str]], n: int, common_share: float = 1.0) -> QuestionIndex:
        kept = [(b, q, w) for b, q in questions if (w := text_words(q))]  # a question without words matches nothing
        grams, owner = ngram_hashes([w for _, _, w in kept], n)
        code = np.unique(np.stack([owner.astype(np.uint64), grams]).T, axis=0)  # distinct n-grams per question
        owner, grams = code[:, 0].astype(np.int64), code[:, 1]
        common = _common(grams, owner, [b for b, _, _ in kept], common_share)
        alone = np.bincount(owner[~common], minlength=len(kept)) == 0  # nothing but template text:
        common &= ~alone[owner]  # such a question keeps all its n-grams, so a copy of it is found
        owner, grams = owner[~common], grams[~common]
        order = np.argsort(grams, kind="stable")
        grams, owner = grams[order], owner[order]
        keys, first = np.unique(grams, return_index=True)
        everyday = _everyday(kept, n)
        return cls(keys=keys, start=np.append(first, len(grams)), qid=owner,
                   size=np.bincount(owner, minlength=len(kept)),
                   short=sorted({len(w) for i, (_, _, w) in enumerate(kept) if len(w) < n and not everyday[i]}),
                   questions=[(b, q) for b, q, _ in kept], whole_only=everyday[owner],
                   telling=(_held_by(grams, owner, kept) < _COMMON_MIN_QUESTIONS) | (common_share >= 1.0))

    def overlaps(self, texts: list[str], owners: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(owner, question id, share of the question's n-grams in the owner's texts), per pair
        that shares any; `owners` maps each text to its owner (a row may own two texts)."""
        who, qid, shared, _ = self.matches(texts, owners, n)
        return who, qid, shared / self.size[qid]

    def matches(self, texts: list[str], owners: np.ndarray, n: int) -> tuple[np.ndarray, ...]:
        """(owner, question id, n-grams shared, how many of them tell the question), per pair
        that shares any; `owners` maps each text to its owner (a row may own two texts)."""
        nothing = np.empty(0, np.int64)
        docs = [text_words(t) for t in texts]
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        found = [(*ngram_hashes(docs, m), m) for m in [n, *self.short]]
        grams = np.concatenate([g for g, _, _ in found])
        who = owners[np.concatenate([o for _, o, _ in found])]
        # An m-gram (m < n) of a longer text: a short question inside it, not the whole text.
        inner = np.concatenate([lengths[o] > m if m < n else np.zeros(len(o), bool) for _, o, m in found])
        pos = np.minimum(np.searchsorted(self.keys, grams), len(self.keys) - 1)
        hit = self.keys[pos] == grams
        pairs = np.unique(np.stack([who[hit], pos[hit], inner[hit]]).T, axis=0)
        _, once = np.unique(pairs[:, :2], axis=0, return_index=True)  # each n-gram once per owner
        pairs = pairs[once]
        if not len(pairs):
            return nothing, nothing, nothing, nothing
        who, pos, inner = pairs[:, 0], pairs[:, 1], pairs[:, 2].astype(bool)
        count = self.start[pos + 1] - self.start[pos]
        within = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        entry = np.repeat(self.start[pos], count) + within
        who = np.repeat(who, count)
        if self.whole_only is not None:
            keep = ~(np.repeat(inner, count) & self.whole_only[entry])
            who, entry = who[keep], entry[keep]
        if not len(entry):
            return nothing, nothing, nothing, nothing
        combo, where, shared = np.unique(np.stack([who, self.qid[entry]]).T, axis=0,
                                         return_inverse=True, return_counts=True)
        telling = self.telling[entry] if self.telling is not None else np.ones(len(entry), bool)
        told = np.bincount(where.reshape(-1), weights=telling, minlength=len(combo)).astype(np.int64)
        return combo[:, 0], combo[:, 1], shared, told


def _common(grams: np.ndarray, owner: np.ndarray, bench_of: list[str], share: float) -> np.ndarray:
    """Per (question, n-gram): the n-gram is in more than `share` of its benchmark's questions
    and in at least _COMMON_MIN_QUESTIONS of them."""
    _, of_question = np.unique(np.array(bench_of, dtype=str), return_inverse=True)
    sizes = np.bincount(of_question)  # questions per benchmark
    bench = of_question[owner]
    _, where, count = np.unique(np.stack([bench.astype(np.uint64), grams]).T, axis=0,
                                return_inverse=True, return_counts=True)
    count = count[where.reshape(-1)]
    return (count > share * sizes[bench]) & (count >= _COMMON_MIN_QUESTIONS)


def _held_by(grams: np.ndarray, owner: np.ndarray, kept: list[tuple[str, str, list[str]]]) -> np.ndarray:
    """Per (question, n-gram): how many distinct questions of the question's benchmark hold the
    n-gram (a question repeated word for word, as BFCL repeats some across its sets, counts once)."""
    _, text = np.unique(np.array([f"{b}\0{' '.join(w)}" for b, _, w in kept], dtype=str), return_inverse=True)
    _, bench = np.unique(np.array([b for b, _, _ in kept], dtype=str), return_inverse=True)
    code = np.stack([bench[owner].astype(np.uint64), grams, text[owner].astype(np.uint64)]).T
    distinct, back = np.unique(code, axis=0, return_inverse=True)
    _, where, count = np.unique(distinct[:, :2], axis=0, return_inverse=True, return_counts=True)
    return count[where.reshape(-1)][back.reshape(-1)]


def _everyday(kept: list[tuple[str, str, list[str]]], n: int) -> np.ndarray:
    """Per question: shorter than n words, and each of its words used by at least
    _EVERYDAY_WORD_QUESTIONS distinct questions of its benchmark."""
    short = np.array([len(w) < n for _, _, w in kept], dtype=bool)
    if not short.any():
        return short
    words, owner = ngram_hashes([w for _, _, w in kept], 1)
    rare = _held_by(words, owner, kept) < _EVERYDAY_WORD_QUESTIONS
    return short & (np.bincount(owner[rare], minlength=len(kept)) == 0)


def _quote(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _QUOTE_CHARS else flat[:_QUOTE_CHARS].rsplit(" ", 1)[0] + "…"  # whole words


@FILTERS.register("decontaminate", params=DecontaminateParams, example="""
filters:
  - name: decontaminate
    mode: drop
    on: prompt                # or completion, both
    include_eval: true        # the recipe's own eval prompts, as benchmark "eval"
    n: 5                      # word n-grams
    min_overlap: 0.5          # share of a question's n-grams found in the row
    common_share: 0.05        # n-grams in more of a benchmark's questions are template text
    # benchmarks:             # files with the questions, relative to the recipe
    #   - {name: gsm8k, path: benchmarks/gsm8k-test.jsonl, field: question}
    #   - {name: bfcl, shipped: bfcl}   # BFCL's single-turn requests (bfcl-eval package)
""")
def decontaminate(rows: list[dict], params: DecontaminateParams, ctx: FilterContext) -> list[FilterVerdict]:
    """Rows whose prompt holds a benchmark or eval question, verbatim or lightly reworded."""
    questions = [(b.name, q) for b in params.benchmarks for q in read_questions(b, ctx.base_dir)]
    if params.include_eval:
        questions += [("eval", str(p["question"])) for p in ctx.eval_prompts]
    out = [FilterVerdict(False)] * len(rows)
    index = QuestionIndex.build(questions, params.n, params.common_share)
    if not index.questions:
        return out
    fields = {"prompt": ["prompt_text"], "completion": ["completion"], "both": ["prompt_text", "completion"]}[params.on]
    if ctx.progress is not None:
        ctx.progress.start(total=len(rows))
    for lo in range(0, len(rows), _ROWS_PER_CHUNK):
        chunk = rows[lo : lo + _ROWS_PER_CHUNK]
        texts = [str(r.get(f) or "") for f in fields for r in chunk]
        owners = np.tile(np.arange(len(chunk)), len(fields))
        who, qid, shared, told = index.matches(texts, owners, params.n)
        size = index.size[qid]
        share = shared / size
        # All of the question, or enough of it (0.5 of 4 n-grams is exactly 2 of 4) that is more
        # than a stock phrase: two n-grams or more, one of them telling the question.
        keep = (share >= params.min_overlap - 1e-9) & ((shared == size) | ((shared >= _MIN_SHARED) & (told > 0)))
        who, qid, share = who[keep], qid[keep], share[keep]
        for k in np.lexsort((qid, -share, who)):  # per row: the largest share, then the first question
            i = lo + int(who[k])
            if out[i].flagged:
                continue
            bench, question = index.questions[qid[k]]
            whole = index.size[qid[k]] == 1 and len(text_words(question)) < params.n
            how = "whole question" if whole else f"overlap {share[k]:.2f}"
            out[i] = FilterVerdict(True, f'{bench} question "{_quote(question)}" ({how})', bench)
        if ctx.progress is not None:
            ctx.progress.advance(len(chunk))
    return out
