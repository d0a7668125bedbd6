"""Task clustering of a log store: the recurring tasks an agent's calls make up (issue 21, step 3).

Calls that carry a tag (`workload_id`, or another key: a column such as `client_id`, or a field
of the request such as `request_params.metadata.task`) are grouped by it. The rest are clustered
by what they are (distill.usage.features: system prompt, tools, user turn, answer shape):
every call, tagged or not, goes into one tree (average linkage on cosine distance), cut where the
silhouette is best over K_RANGE clusters (or at `k`); an untagged call that falls with tagged
calls joins the workload whose tagged calls there are nearest it, and the other untagged calls
form automatic clusters.

Ids are stable: a tag's cluster is named by the tag; an automatic cluster by a hash of its most
common system prompt, tool set and answer kind, or by the id the last clustering gave most of
its calls (so a later import keeps an id while the cluster is the same). The report (label,
size, shares of calls and tokens, tools, examples, models and cost, task type:
distill.usage.cluster_report) and every call's cluster are written into the store
(UsageStore.write_clusters).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import silhouette_score
from sklearn.preprocessing import normalize

from distill.lineage import code_version, digest
from distill.usage.cluster_report import describe, tokens
from distill.usage.features import CallView, featurise, similarities, view, word_counts
from distill.usage.prices import load_prices
from distill.usage.store import StoreError, UsageStore

KIND = "distill usage clusters"
COLUMNS = ["call_id", "workload_id", "client_id", "model", "response_model", "prompt", "completion", "tools",
           "request_params", "prompt_tokens", "completion_tokens", "status", "duplicate"]
KEY_COLUMNS = ("workload_id", "client_id", "model", "response_model")
KEY_PARAMS = "request_params."  # a key below it is a path into the request's other fields
MAX_TREE = 2500  # calls the tree is built on (quadratic memory); the rest join their nearest cluster
K_RANGE = (2, 30)
MIN_SILHOUETTE = 0.1  # no cut scores above it: the calls are one task
MIN_SPLIT = 0.25  # cosine distance below which calls are never split: they differ by values (a city), not task


class ClusterError(Exception):
    """A bad key or k; the message says what is allowed."""


@dataclass
class Automatic:
    labels: np.ndarray  # cluster of each call, 0..k-1
    k: int
    silhouette: float | None
    tree_calls: int


def check_key(key: str | None) -> None:
    if key is None or key in KEY_COLUMNS or (key.startswith(KEY_PARAMS) and len(key) > len(KEY_PARAMS)):
        return
    raise ClusterError(f"--key {key!r}: not a key calls can be tagged by; give one of {', '.join(KEY_COLUMNS)}, "
                       f"a field of the request such as {KEY_PARAMS}metadata.task, or none")


def tag_of(row: dict, key: str | None) -> str | None:
    if key is None:
        return None
    if key in KEY_COLUMNS:
        return row.get(key) or None
    value = json.loads(row.get("request_params") or "{}")
    for part in key[len(KEY_PARAMS):].split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return None if value in (None, "") else str(value)


def _centroids(X, labels: np.ndarray, k: int) -> np.ndarray:
    return normalize(np.vstack([np.asarray(X[labels == c].mean(axis=0)).ravel() for c in range(k)]))


def cluster_automatically(X, k: int | None = None) -> Automatic:
    """Clusters of the rows of X (unit length): average linkage on cosine distance, cut at k, or
    where the silhouette is best among cuts above MIN_SPLIT (one cluster when none reaches
    MIN_SILHOUETTE)."""
    n = X.shape[0]
    if n < 3 or k == 1:
        return Automatic(np.zeros(n, int), min(n, 1), None, n)
    sample = np.unique(np.linspace(0, n - 1, MAX_TREE).round().astype(int)) if n > MAX_TREE else np.arange(n)
    dist = np.clip(1 - similarities(X[sample], X[sample]), 0, None)
    np.fill_diagonal(dist, 0)
    tree = linkage(squareform(dist, checks=False), method="average")
    score = None
    if k is not None:
        cut = fcluster(tree, k, "maxclust")
    else:
        cut = np.ones(len(sample), int)
        best = MIN_SILHOUETTE
        most = len(set(fcluster(tree, MIN_SPLIT, "distance")))
        for kk in range(K_RANGE[0], min(K_RANGE[1], most, len(sample) - 1) + 1):
            labels = fcluster(tree, kk, "maxclust")
            if len(set(labels)) < 2:
                continue
            s = float(silhouette_score(dist, labels, metric="precomputed"))
            if s > best + 1e-9:  # ties keep the fewer clusters
                best, score, cut = s, s, labels
    _, cut = np.unique(cut, return_inverse=True)
    found = int(cut.max()) + 1
    if len(sample) == n:
        return Automatic(cut, found, score, n)
    labels = similarities(X, _centroids(X[sample], cut, found)).argmax(axis=1)
    labels[sample] = cut
    return Automatic(labels, found, score, len(sample))


def reconcile(tags: list[str | None], auto: np.ndarray, X) -> list[tuple[str, str]]:
    """Each call's cluster: ("tag", value), or ("auto", n) for an untagged call whose automatic
    cluster holds no tagged call."""
    out: list = [("tag", t) if t else None for t in tags]
    for c in np.unique(auto):
        members = np.flatnonzero(auto == c)
        loose = [i for i in members if not tags[i]]
        tagged = [i for i in members if tags[i]]
        if not tagged:
            for i in loose:
                out[i] = ("auto", str(c))
            continue
        names = sorted({tags[i] for i in tagged})
        ids = np.array(tagged)
        cent = _centroids(X[ids], np.array([names.index(tags[i]) for i in tagged]), len(names))
        for i, best in zip(loose, similarities(X[loose], cent).argmax(axis=1) if loose else []):
            out[i] = ("tag", names[best])
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:48] or "tag"


def stable_ids(groups: dict[tuple, list[int]], rows: list[dict], views: list[CallView],
               previous: dict[str, str]) -> dict[tuple, str]:
    """A tag's cluster is named by the tag. An automatic one by a hash of its most common system
    prompt, tools and answer kind; when that hash is new (a prompt revision now dominates) it keeps
    the id the last clustering gave most of its calls, if no cluster named by content claims it."""
    ids: dict[tuple, str] = {}
    for g in sorted(g for g in groups if g[0] == "tag"):
        name = _slug(g[1])
        ids[g] = name if name not in ids.values() else f"{name}-{digest(g[1], length=6)}"
    auto = sorted((g for g in groups if g[0] == "auto"), key=lambda g: (-len(groups[g]), g))
    content = {g: "auto-" + digest(*Counter(views[i].signature() for i in groups[g]).most_common(1)[0][0], length=8)
               for g in auto}
    known = set(previous.values())
    for g in auto:  # named by content: a cluster seen before, or no clustering before it
        if (content[g] in known or not previous) and content[g] not in ids.values():
            ids[g] = content[g]
    for g in auto:
        if g in ids:
            continue
        before = Counter(previous[rows[i]["call_id"]] for i in groups[g] if rows[i]["call_id"] in previous)
        old, n = before.most_common(1)[0] if before else (None, 0)
        if old and old.startswith("auto-") and n * 2 > sum(before.values()) and old not in ids.values():
            ids[g] = old
            continue
        name, n = content[g], 1
        while name in ids.values():
            n += 1
            name = f"{content[g]}-{n}"
        ids[g] = name
    return ids


@dataclass
class Clustering:
    report: dict  # what clusters.json holds
    assignments: dict[str, str]  # call_id -> cluster id


def cluster_store(uri: str, key: str | None = "workload_id", k: int | None = None, prices_file: str | None = None,
                  write: bool = True) -> Clustering:
    """Clusters the calls of the store at `uri`, and writes the report and every call's cluster
    into the store (unless not `write`). Raises StoreError, ClusterError, PriceError."""
    check_key(key)
    if k is not None and k < 1:
        raise ClusterError(f"--k {k}: give at least 1 cluster")
    prices = load_prices(prices_file)
    store = UsageStore.open(uri, existing=True)
    rows = store.read_calls(COLUMNS).to_pylist()
    if not rows:
        raise StoreError(f"{uri}: holds no calls yet; import logs into it first: distill usage import FILE... --to {uri}")
    if k is not None and k > len(rows):
        raise ClusterError(f"--k {k}: the store holds {len(rows)} calls; give at most {len(rows)}")
    views = [view(r) for r in rows]
    X = featurise(views)
    tags = [tag_of(r, key) for r in rows]
    untagged = sum(t is None for t in tags)
    auto = cluster_automatically(X, k) if untagged else None
    final = reconcile(tags, auto.labels, X) if auto else [("tag", t) for t in tags]
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, g in enumerate(final):
        groups[g].append(i)
    ids = stable_ids(groups, rows, views, store.read_assignments())
    total_tokens = sum(tokens(r) for r in rows)
    background = word_counts([v.system + " " + v.user for v in views])
    clusters = []
    for g, members in sorted(groups.items(), key=lambda kv: (-len(kv[1]), ids[kv[0]])):
        clusters.append({"id": ids[g], "source": g[0], "tag": g[1] if g[0] == "tag" else None,
                         "adopted": sum(tags[i] is None for i in members) if g[0] == "tag" else 0,
                         **describe(members, rows, views, X, prices, g[1] if g[0] == "tag" else None, background)})
        clusters[-1]["share_of_calls"] = round(len(members) / len(rows), 4)
        clusters[-1]["share_of_tokens"] = round(clusters[-1]["tokens"] / total_tokens, 4) if total_tokens else None
    costs = [c["cost_usd"] for c in clusters]
    report = {
        "kind": KIND, "version": 1, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "code_version": code_version(), "store": uri, "key": key, "calls": len(rows), "tagged": len(rows) - untagged,
        "untagged": untagged, "adopted": sum(c["adopted"] for c in clusters), "tokens": total_tokens,
        "automatic": None if auto is None else {
            "clusters": auto.k, "chosen_by": "--k" if k is not None else "silhouette", "silhouette": auto.silhouette,
            "k_range": list(K_RANGE), "tree_calls": auto.tree_calls},
        "prices": prices.source, "cost_usd": None if None in costs else round(sum(costs), 6),
        "clusters": clusters,
    }
    assignments = {rows[i]["call_id"]: ids[g] for g, members in groups.items() for i in members}
    if write:
        store.write_clusters(report, assignments)
    return Clustering(report, assignments)
