"""What task clustering reads of a stored call, and the vectors it compares calls by.

A call is seen through four fields (`CallView`): its system prompt, the names of the tools it
was offered, its last user turn, and the shape of its answer (the tool called and its argument
names, the keys of a JSON answer, a short label, or free text; never the answer's values, which
differ between calls of one task). In an agent, the same system prompt and tool set almost
always mean the same task, so those two fields weigh most.

`featurise` is the one function that turns views into vectors: TF-IDF over each field's words
and word pairs, each field's block scaled by its weight, rows of unit length. Offline, cheap and
deterministic. An embedding model can replace it: any function from views to unit-length rows
(dense or sparse) whose dot product says how alike two calls are will do.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer
from sklearn.preprocessing import normalize

# How much each field counts in the distance between two calls.
WEIGHTS = {"system": 1.0, "tools": 1.0, "kind": 0.8, "shape": 0.6, "user": 0.7}
LABEL_WORDS = 3  # an answer of at most this many words (and no sentence) reads as a label
ANSWER_KINDS = ("tool_call", "json", "label", "text", "none")
_PLACEHOLDER = re.compile(r"<([A-Z_]+)_\d+>")  # redaction's <PERSON_1>: the kind is the word
_DIGITS = re.compile(r"\d+")


@dataclass(frozen=True)
class CallView:
    system: str  # as stored (redacted)
    tools: tuple[str, ...]
    user: str  # the last user turn, as stored
    answer_kind: str  # one of ANSWER_KINDS
    answer_shape: tuple[str, ...]  # tools called and their argument names, or a JSON answer's keys
    answer: str  # the answer's text (a label's value), for the cluster's task type

    def signature(self) -> tuple:
        """Equal for calls sent with the same system prompt (dates aside) and tools, answered alike."""
        return (normal(self.system), self.tools, self.answer_kind)


def normal(text: str) -> str:
    """Dates, amounts and ids differ from call to call; redacted values differ by number."""
    return _DIGITS.sub("0", _PLACEHOLDER.sub(r"\1", text or ""))


def answer_kind(completion: list[dict]) -> tuple[str, tuple[str, ...], str]:
    """(kind, shape, text) of a logged answer."""
    if not completion:
        return "none", (), ""
    turn = completion[-1]
    if turn.get("tool_calls"):
        shape = []
        for call in turn["tool_calls"]:
            shape.append(call["function"]["name"])
            try:
                args = json.loads(call["function"]["arguments"])
            except json.JSONDecodeError:
                args = {}
            shape += [f"{call['function']['name']}.{a}" for a in (args if isinstance(args, dict) else {})]
        return "tool_call", tuple(shape), ""
    text = (turn.get("content") or "").strip()
    try:
        value = json.loads(text) if text[:1] in "[{" else None
    except json.JSONDecodeError:
        value = None
    if isinstance(value, dict):
        return "json", tuple(sorted(value)), text
    if isinstance(value, list):
        return "json", tuple(sorted({k for v in value if isinstance(v, dict) for k in v})), text
    if text and len(text.split()) <= LABEL_WORDS and not re.search(r"[.!?]\s|\n", text):
        return "label", (), text.rstrip(".").lower()
    return ("text" if text else "none"), (), text


def view(row: dict) -> CallView:
    """A stored call (a row of distill.usage.store.CALL_SCHEMA) as clustering sees it."""
    prompt = row.get("prompt") or []
    system = "\n".join(t.get("content") or "" for t in prompt if t["role"] in ("system", "developer"))
    user = next((t.get("content") or "" for t in reversed(prompt) if t["role"] == "user"), "")
    tools = json.loads(row["tools"]) if row.get("tools") else []
    names = tuple(sorted(t.get("function", t).get("name", "") for t in tools if isinstance(t, dict)))
    kind, shape, text = answer_kind(row.get("completion") or [])
    return CallView(system, names, user, kind, shape, text)


def _field_texts(views: list[CallView]) -> dict[str, list[str]]:
    return {
        "system": [normal(v.system) for v in views],
        "tools": [" ".join(v.tools) for v in views],
        # A failed call has no answer: its other fields place it.
        "kind": [v.answer_kind if v.answer_kind != "none" else "" for v in views],
        "shape": [" ".join(v.answer_shape) for v in views],
        "user": [normal(v.user) for v in views],
    }


def featurise(views: list[CallView]) -> sparse.csr_matrix:
    """One unit-length row per call; the dot product of two rows is how alike the calls are."""
    blocks = []
    for name, texts in _field_texts(views).items():
        # Names of tools and shapes are tokens whole ("get_weather", "book_hotel.city").
        whole = name in ("tools", "kind", "shape")
        pattern, ngrams = (r"[^\s]+", (1, 1)) if whole else (r"(?u)\b\w\w+\b", (1, 2))
        vectorizer = TfidfVectorizer(token_pattern=pattern, ngram_range=ngrams, sublinear_tf=True, lowercase=True,
                                     dtype=np.float64)
        try:
            block = vectorizer.fit_transform(texts)
        except ValueError:  # no call has this field (no tools anywhere): it tells nothing
            continue
        blocks.append(block * WEIGHTS[name])
    if not blocks:
        return sparse.csr_matrix((len(views), 1))
    return normalize(sparse.hstack(blocks).tocsr())


def similarities(a, b) -> np.ndarray:
    """Dot products of the rows of a and b (sparse or dense), as a dense array."""
    product = a @ b.T
    return product.toarray() if sparse.issparse(product) else np.asarray(product)


def top_terms(texts: list[str], background: Counter, total: int, n: int = 3) -> list[str]:
    """The words that set these texts apart from all of them (`background`: in how many of
    `total` texts each word occurs): frequent here, rarer elsewhere."""
    here = Counter(w for t in texts for w in set(_words(t)))
    score = {w: (c / len(texts)) * np.log((1 + total) / (1 + background[w])) for w, c in here.items()
             if c >= max(2, len(texts) // 5)}
    return [w for w, _ in sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def _words(text: str) -> list[str]:
    return [w for w in re.findall(r"[a-z][a-z-]{2,}", normal(text).lower()) if w not in ENGLISH_STOP_WORDS]


def word_counts(texts: list[str]) -> Counter:
    return Counter(w for t in texts for w in set(_words(t)))
