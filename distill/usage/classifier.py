"""Which task cluster an incoming chat-completions request belongs to, before it is answered: what
a router reads to send the request to the small model that owns its task, or to the large model.

Learnt from a clustered log store (distill.usage.clusters). A request has no answer yet, so only
its system prompt, tool names and last user turn are read (never the answer fields that
clustering also weighs). Two levels, in order:

1. signature: a hash of the normalised system prompt and the sorted tool names. Agents reuse
   their system prompts and tool sets, so when the stored calls with a signature (a few at least)
   fall (almost) all into one cluster, that cluster is the answer, exactly and in a few microseconds.
2. nearest centroid: otherwise (a new prompt revision, a generic prompt several tasks share), a
   small TF-IDF vector of the three fields against the clusters' centroids; the nearest cluster
   if it is near enough and clearly nearer than any other. A cluster has a centroid per signature it
   was sent with (its prompt revisions): one centroid over all of them lies near its main
   revision only, and a revision that shares another task's generic prompt ("You are a helpful
   assistant.") was taken for that other task.

Calls of clusters the classifier may not answer (`clusters`) still count, as evidence for "none
of these". The classifier is saved as JSON (no pickle), with the store's call count and a
fingerprint of the clustering, so `stale` can tell when the store moved on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Literal

import numpy as np
from scipy import sparse

from distill import storage
from distill.lineage import code_version, digest
from distill.usage.features import WEIGHTS, normal, view
from distill.usage.store import UsageStore

KIND = "distill usage classifier"
VERSION = 2  # 2: terms saved as "system|word", "tools|name", "user|word" (1: "s|", "t|", "u|")
COLUMNS = ["call_id", "prompt", "tools"]
FIELDS = ("system", "tools", "user")
MIN_SHARE = 0.95  # a signature answers when this share of its calls is in one cluster
MIN_SIGNATURE_CALLS = 3  # and it has this many calls: one or two cannot show that a prompt is one task's
# min_similarity: this share of the given percentile of the training calls' similarity to their own
# centroid. A new prompt revision keeps a task's tools and its users' words but not all of its prompt,
# so it lies further from the centroid than the calls it was learnt from.
SIMILARITY_PERCENTILE, SIMILARITY_SHARE = 5.0, 0.5
# A request routes to its nearest cluster when nearer it than any other by this much: one about as
# near two clusters (a prompt they share, and little else) belongs to neither.
MIN_MARGIN = 0.05
MIN_DF = 2  # a term of one call only is a value (a name, an order id), not the task
MIN_GROUP = 3  # calls of a cluster and signature that get a centroid of their own; fewer join the cluster's rest
MAX_GROUPS = 8  # centroids of one cluster by signature at most (the largest): classify time grows with them
WORD = r"(?u)\b\w\w+\b"
_PLACEHOLDER = re.compile(r"<[A-Z_]+_\d+>")  # redaction's <PERSON_1>: never in a live request, so never learnt
_SPACE = re.compile(r"\s+")


class ClassifierError(Exception):
    """The store cannot be learnt from, or a saved classifier cannot be read; the message says what to do."""


@dataclass(frozen=True)
class Route:
    cluster: str | None  # None: no cluster this classifier answers
    confidence: float  # signature: the share of its calls in the cluster; centroid: cosine similarity
    how: Literal["signature", "centroid", "none"]  # the level that decided; "none": neither placed it


NO_ROUTE = Route(None, 0.0, "none")


@lru_cache(maxsize=4096)  # agents send a few system prompts over and over: hash each once
def signature(system: str, tools: tuple[str, ...]) -> str:
    """Equal for requests sent with the same system prompt (dates, numbers and spacing aside) and tools."""
    text = _SPACE.sub(" ", normal(system)).strip() + "\x00" + "\x1f".join(sorted(tools))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _text(content) -> str:
    """A turn's text: a string, or the text parts of a list of OpenAI content parts joined as the import joins them."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def request_fields(request) -> tuple[str, tuple[str, ...], str] | None:
    """(system, sorted tool names, last user turn) of a chat-completions request; None when it has nothing to read."""
    if not isinstance(request, dict) or not isinstance(request.get("messages"), list):
        return None
    turns = [m for m in request["messages"] if isinstance(m, dict)]
    system = "\n".join(_text(m.get("content")) for m in turns if m.get("role") in ("system", "developer"))
    user = next((_text(m.get("content")) for m in reversed(turns) if m.get("role") == "user"), "")
    tools = request.get("tools") if isinstance(request.get("tools"), list) else []
    names = []
    for t in tools:  # the OpenAI form {"type": "function", "function": {...}} or the flat {"name", "parameters"}
        fn = t.get("function", t) if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]:
            names.append(fn["name"])
    if not (system.strip() or user.strip() or names):
        return None
    return system, tuple(sorted(names)), user


class Vectorizer:
    """TF-IDF of a request's three fields (words and word pairs of the system prompt and the user
    turn, whole tool names), each field's block of unit length times its weight, the row of unit
    length. Its vocabulary is fitted on the training calls; words it never saw count for nothing."""

    def __init__(self, terms: list[str], idf: list[float], weights: dict[str, float], pattern: str = WORD):
        self.terms, self.idf, self.weights, self.pattern = terms, [float(x) for x in idf], weights, pattern
        self._word = re.compile(pattern)
        # Per field, term -> (column, idf): plain dicts and floats, as numpy costs microseconds per call.
        self._index: dict[str, dict[str, tuple[int, float]]] = {f: {} for f in FIELDS}
        for col, (term, weight) in enumerate(zip(terms, self.idf)):
            field, _, word = term.partition("|")
            if field not in self._index:
                raise ValueError(f"term {term!r} is not of a field ({', '.join(FIELDS)})")
            self._index[field][word] = (col, weight)

    def field_terms(self, system: str, tools: tuple[str, ...], user: str) -> dict[str, Counter]:
        """Term counts of each field (a term is saved as "field|term")."""
        out = {"tools": Counter(tools)}
        for name, text in (("system", system), ("user", user)):
            words = self._word.findall(normal(_PLACEHOLDER.sub(" ", text)).lower())
            out[name] = counts = Counter(words)
            counts.update(map(" ".join, zip(words, words[1:])))
        return out

    @classmethod
    def fit(cls, calls: list[tuple[str, tuple[str, ...], str]], weights: dict[str, float]) -> Vectorizer:
        empty = cls([], [], weights)
        df = Counter(f"{field}|{t}" for c in calls for field, terms in empty.field_terms(*c).items() for t in terms)
        terms = sorted(t for t, n in df.items() if n >= MIN_DF)
        idf = [math.log((1 + len(calls)) / (1 + df[t])) + 1 for t in terms]  # scikit-learn's smooth idf
        return cls(terms, idf, weights)

    def transform(self, system: str, tools: tuple[str, ...], user: str) -> tuple[list[int], np.ndarray]:
        """(term columns, values) of the request's unit-length row; empty when no term is known."""
        columns: list[int] = []
        values: list[float] = []
        for name, counts in self.field_terms(system, tools, user).items():
            index = self._index[name]
            known = [(index[t], n) for t, n in counts.items() if t in index]
            block = [(col, (1 + math.log(n)) * idf) for (col, idf), n in known]  # sublinear tf
            if block:
                scale = self.weights[name] / math.sqrt(sum(v * v for _, v in block))
                columns += [col for col, _ in block]
                values += [v * scale for _, v in block]
        if not columns:
            return [], np.empty(0)
        v = np.array(values)
        return columns, v / math.sqrt(v @ v)

    def settings(self) -> dict:
        return {"pattern": self.pattern, "ngrams": [1, 2], "min_df": MIN_DF, "weights": self.weights,
                "terms": self.terms, "idf": self.idf}


def clustering_fingerprint(assignments: dict[str, str]) -> str:
    return digest(sorted(assignments.items()))


def _groups(labels: list[str], signatures: list[str]) -> dict[tuple[str, str], list[int]]:
    """Training calls by (cluster, signature), the centroids' members: a cluster's largest
    signatures (MIN_GROUP calls or more, MAX_GROUPS at most) alone, its other calls together."""
    by: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, key in enumerate(zip(labels, signatures)):
        by[key].append(i)
    out: dict[tuple[str, str], list[int]] = defaultdict(list)
    for cluster in sorted(set(labels)):
        own = sorted((k for k in by if k[0] == cluster), key=lambda k: (-len(by[k]), k[1]))
        for rank, key in enumerate(own):
            alone = len(by[key]) >= MIN_GROUP and rank < MAX_GROUPS
            out[key if alone else (cluster, "rest")] += by[key]
    return dict(out)


class RequestClassifier:
    def __init__(self, centroid_clusters: list[str], answers: list[str], centroids: np.ndarray, vectorizer: Vectorizer,
                 signatures: dict[str, dict], min_share: float, min_similarity: float, min_margin: float, meta: dict):
        self.centroid_clusters = centroid_clusters  # the cluster of each row of centroids
        self.answers = answers  # the clusters it may answer
        self.centroids, self.vectorizer, self.signatures = centroids, vectorizer, signatures
        self.min_share, self.min_similarity, self.min_margin, self.meta = min_share, min_similarity, min_margin, meta
        self._answerable = set(answers)
        self._by_term = np.ascontiguousarray(centroids.T)  # a term's row: its weight in every centroid
        self._cluster_index = np.unique(centroid_clusters, return_inverse=True)[1] if centroid_clusters else np.empty(0, int)

    @classmethod
    def fit(cls, uri: str, clusters: list[str] | None = None, min_share: float = MIN_SHARE,
            leave_out: Iterable[str] = ()) -> RequestClassifier:
        """Learnt from the calls of the store at `uri` and their clusters; answers only `clusters`
        (default: every cluster). `leave_out`: call ids not learnt from (held back to measure it).
        Raises StoreError, ClassifierError."""
        if not 0 < min_share <= 1:
            raise ClassifierError(f"min_share {min_share}: give a share in (0, 1]")
        store = UsageStore.open(uri, existing=True)
        rows = store.read_calls(COLUMNS).to_pylist()
        assignments = store.read_assignments()
        if not rows:
            raise ClassifierError(f"{uri}: holds no calls; import logs into it and cluster them first: "
                                  f"distill usage import FILE... --to {uri}, then distill usage clusters {uri}")
        if not assignments:
            raise ClassifierError(f"{uri}: its calls were never clustered; run `distill usage clusters {uri}` first")
        if missing := sum(r["call_id"] not in assignments for r in rows):
            raise ClassifierError(f"{uri}: {missing} of its {len(rows)} calls were imported after the last clustering; "
                                  f"run `distill usage clusters {uri}` again")
        known = sorted(set(assignments.values()))
        answers = known if clusters is None else list(dict.fromkeys(clusters))
        unknown = [c for c in answers if c not in known]
        if unknown or not answers:
            raise ClassifierError(f"clusters {', '.join(map(repr, unknown)) or '[]'}: not clusters of {uri}; "
                                  f"give some of {', '.join(known)}, or None to answer them all")
        skip = set(leave_out)
        train = [r for r in rows if r["call_id"] not in skip]
        if not train:
            raise ClassifierError(f"{uri}: every call is left out; leave some to learn from")
        views = [view(r) for r in train]
        calls = [(v.system, v.tools, v.user) for v in views]
        labels = [assignments[r["call_id"]] for r in train]

        by_signature: dict[str, Counter] = defaultdict(Counter)
        for (system, tools, _), label in zip(calls, labels):
            by_signature[signature(system, tools)][label] += 1
        signatures = {}
        for key, counts in by_signature.items():
            cluster, n = counts.most_common(1)[0]
            total = sum(counts.values())
            if total >= MIN_SIGNATURE_CALLS:  # a rarer signature is left to the centroids
                signatures[key] = {"cluster": cluster, "share": n / total, "calls": total}

        vectorizer = Vectorizer.fit(calls, {f: WEIGHTS[f] for f in FIELDS})
        X = _rows(vectorizer, calls)
        groups = _groups(labels, [signature(s, t) for s, t, _ in calls])
        y = np.empty(len(calls), int)
        for g, members in enumerate(groups.values()):
            y[members] = g
        centroids = np.vstack([np.asarray(X[members].mean(axis=0)).ravel() for members in groups.values()])
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        own = np.asarray(X @ centroids.T)[np.arange(len(calls)), y]  # each call's similarity to its own centroid
        # A request below it is not like the calls of any cluster (in-sample, so a little optimistic).
        min_similarity = SIMILARITY_SHARE * float(np.percentile(own, SIMILARITY_PERCENTILE))
        meta = {"store": uri, "store_calls": len(rows), "clustering": clustering_fingerprint(assignments),
                "learnt_from": len(train)}
        return cls([c for c, _ in groups], answers, centroids, vectorizer, signatures, min_share, min_similarity,
                   MIN_MARGIN, meta)

    def classify(self, request: dict) -> Route:
        """The cluster of a chat-completions request (as sent to chat.completions.create), or None.
        Never raises: a request it cannot read routes to None."""
        try:
            return self._classify(request)
        except Exception:  # noqa: BLE001 - a router must answer every request; unreadable means "none"
            return NO_ROUTE

    def _classify(self, request) -> Route:
        fields = request_fields(request)
        if fields is None:
            return NO_ROUTE
        system, tools, user = fields
        known = self.signatures.get(signature(system, tools))
        if known is not None and known["share"] >= self.min_share:
            return Route(known["cluster"] if known["cluster"] in self._answerable else None, known["share"], "signature")
        idx, vals = self.vectorizer.transform(system, tools, user)
        if not idx:
            return NO_ROUTE
        sims = vals @ self._by_term[idx]
        top = int(sims.argmax())
        best = float(sims[top])
        others = sims[self._cluster_index != self._cluster_index[top]]
        runner_up = float(others.max()) if len(others) else 0.0  # excluded clusters count here too
        if best < self.min_similarity or best - runner_up < self.min_margin:
            return NO_ROUTE
        cluster = self.centroid_clusters[top]
        return Route(cluster if cluster in self._answerable else None, best, "centroid")

    def stale(self, uri: str | None = None) -> str | None:
        """Why the store (default: the one it was learnt from) has moved on since, or None when it has not."""
        uri = uri or self.meta["store"]
        store = UsageStore.open(uri, existing=True)
        calls = store.read_manifest()["records"]
        if calls != self.meta["store_calls"]:
            return (f"{uri} now holds {calls} calls, the classifier was learnt when it held {self.meta['store_calls']}; "
                    f"run `distill usage clusters {uri}` and fit the classifier again")
        if clustering_fingerprint(store.read_assignments()) != self.meta["clustering"]:
            return f"{uri} was clustered again since the classifier was learnt, into other clusters; fit it again"
        return None

    # -- JSON ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """One JSON file; compact, as it is mostly centroid numbers (Python's floats read back exactly)."""
        data = {
            "kind": KIND, "version": VERSION, "code_version": code_version(), **self.meta,
            "answers": self.answers, "centroid_clusters": self.centroid_clusters,
            "min_share": self.min_share, "min_similarity": self.min_similarity, "min_margin": self.min_margin,
            "min_similarity_from": f"{SIMILARITY_SHARE:g} x the {SIMILARITY_PERCENTILE:g}th percentile of the training "
                                   "calls' similarity to their own centroid",
            "vectorizer": self.vectorizer.settings(), "centroids": self.centroids.tolist(),
            "signatures": self.signatures}
        storage.write_text(Path(path), json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RequestClassifier:
        """A classifier `save` wrote; ClassifierError when the file is not one."""
        refit = "fit the classifier again (RequestClassifier.fit) and save it"
        if not Path(path).is_file():
            raise ClassifierError(f"{path}: no such file; give the file RequestClassifier.save wrote, or {refit}")
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ClassifierError(f"{path}: cannot be read as JSON ({e}); {refit}") from None
        if not isinstance(data, dict) or data.get("kind") != KIND:
            raise ClassifierError(f"{path}: not a saved request classifier (no kind {KIND!r}); give the file "
                                  f"RequestClassifier.save wrote, or {refit}")
        version = data.get("version")
        if version != VERSION:
            newer = isinstance(version, int) and version > VERSION
            raise ClassifierError(f"{path}: classifier version {version!r}, this distill reads version {VERSION}; "
                                  + ("upgrade distill" if newer else refit))
        try:
            v = data["vectorizer"]
            if sorted(v["weights"]) != sorted(FIELDS):
                raise ValueError(f"vectorizer weights {sorted(v['weights'])}, not one for each of {', '.join(FIELDS)}")
            vectorizer = Vectorizer(v["terms"], v["idf"], v["weights"], v["pattern"])
            meta = {k: data[k] for k in ("store", "store_calls", "clustering", "learnt_from")}
            centroids = np.asarray(data["centroids"], float).reshape(len(data["centroid_clusters"]), len(v["terms"]))
            return cls(data["centroid_clusters"], data["answers"], centroids,
                       vectorizer, data["signatures"], float(data["min_share"]), float(data["min_similarity"]),
                       float(data["min_margin"]), meta)
        except KeyError as e:
            raise ClassifierError(f"{path}: a saved classifier without its {e.args[0]!r} field; {refit}") from None
        except (TypeError, ValueError, re.error) as e:
            raise ClassifierError(f"{path}: a saved classifier with a bad field ({e}); {refit}") from None


def _rows(vectorizer: Vectorizer, calls: list) -> sparse.csr_matrix:
    """The calls' rows, as the classifier sees them one request at a time."""
    indptr, indices, data = [0], [], []
    for call in calls:
        columns, values = vectorizer.transform(*call)
        indices += columns
        data += values.tolist()
        indptr.append(len(indices))
    return sparse.csr_matrix((np.array(data, float), np.array(indices, int), indptr),
                             shape=(len(calls), len(vectorizer.terms)))
