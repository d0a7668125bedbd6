"""Questions to the lineage store: what derives from an artifact, and where a model came from.

A walk over the edges from the matching artifacts, down to what derives from them or up to
their sources; when nothing matches, a hint says why (a close name, another kind, an empty store).
"""

from __future__ import annotations

import difflib
import re

from sqlalchemy import select

from distill.lineage_store.tables import KINDS, Store, artifacts, edges


class Lineage(list):
    """Query rows (plain dicts, JSON-ready), plus `hint`: why nothing matched, or a note on what did."""

    def __init__(self, rows=(), hint: str | None = None):
        super().__init__(rows)
        self.hint = hint


def descendants(store: Store, kind: str, key: str) -> Lineage:
    """Everything derived from the `kind` artifacts matching `key`, the matches first (depth 0).

    Keys match case-insensitively: a teacher by id or model, a dataset by name or content
    hash (a prefix of 8+ hex digits will do), a licence by id, a model by name or weights hash.
    """
    return _walk(store, kind, key, down=True)


def ancestry(store: Store, model: str) -> Lineage:
    """Everything a student model (by name or weights hash) came from, the model first."""
    return _walk(store, "model", model, down=False)


def _walk(store: Store, kind: str, key: str, down: bool) -> Lineage:
    kind = {"license": "licence", "base": "base_model", "prompts": "prompt_source"}.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}; kinds: {', '.join(KINDS)}")
    with store.connect() as conn:
        candidates = [r._asdict() for r in conn.execute(select(artifacts).where(artifacts.c.kind == kind))]
        roots = [a for a in candidates if _matches(a, key)]
        if not roots:
            return Lineage([], _hint(store, conn, kind, key))
        seen = {a["id"]: (0, None, None) for a in roots}  # id -> (depth, via id, relation)
        also: dict[str, set[str]] = {}  # id -> the other relations it is reached by
        frontier, depth = list(seen), 0
        near, far = (edges.c.parent, edges.c.child) if down else (edges.c.child, edges.c.parent)
        while frontier:
            depth += 1
            found = conn.execute(select(near, far, edges.c.relation).where(near.in_(frontier))).all()
            frontier = []
            for via, other, relation in sorted(found):
                if other not in seen:
                    seen[other] = (depth, via, relation)
                    frontier.append(other)
                elif relation != seen[other][2]:  # reached again another way: a set both trained and evaluated on
                    also.setdefault(other, set()).add(relation)
        everything = {r.id: r._asdict() for r in conn.execute(select(artifacts).where(artifacts.c.id.in_(list(seen))))}
    rows = [_row(everything, seen, id_) | {"also": sorted(also.get(id_, ()))} for id_ in seen]
    rows.sort(key=lambda r: (r["depth"], KINDS.index(r["kind"]), r["name"].lower(), r["version"] or ""))
    hint = f"{len(roots)} {kind}s match {key!r}; rows for all of them" if len(roots) > 1 else None
    return Lineage(rows, hint)


def _matches(a: dict, key: str) -> bool:
    k = key.strip().lower()
    names = {a["id"], a["name"], a["version"], a["attrs"].get("model")}
    if k in {str(n).lower() for n in names if n}:
        return True
    return bool(re.fullmatch(r"[0-9a-f]{8,}", k)) and (a["version"] or "").lower().startswith(k)


def _row(everything: dict, seen: dict, id_: str) -> dict:
    a = everything[id_]
    depth, via, relation = seen[id_]
    path, node = [a["name"]], via
    while node is not None:
        path.insert(0, everything[node]["name"])
        node = seen[node][1]
    created = a["created_at"]
    return {"id": a["id"], "kind": a["kind"], "name": a["name"], "version": a["version"], "licence": a["licence"],
            "run_id": a["run_id"], "depth": depth, "relation": relation, "via": everything[via]["name"] if via else None,
            "path": path, "attrs": a["attrs"], "created_at": created.isoformat() if created else None}


def _hint(store: Store, conn, kind: str, key: str) -> str:
    where = f"the lineage store {store.url.render_as_string(hide_password=True)}"
    everything = {r.id: r._asdict() for r in conn.execute(select(artifacts))}  # only on a miss
    elsewhere = sorted({a["kind"] for a in everything.values() if a["kind"] != kind and _matches(a, key)})
    if elsewhere:
        return f"no {kind} matches {key!r} in {where}; it is known there as a {' and a '.join(elsewhere)}"
    names = sorted({a["name"] for a in everything.values() if a["kind"] == kind})
    if not names:
        return (f"no {kind} matches {key!r}: {where} holds no {kind} yet; a run is registered when `distill run` "
                "finishes (or point --store / DISTILL_LINEAGE_URL at the team's store)")
    lowered = {n.lower(): n for n in names}
    close = [lowered[n] for n in difflib.get_close_matches(key.lower(), list(lowered), n=5, cutoff=0.5)]
    if close:
        return f"no {kind} matches {key!r} in {where}; did you mean {', '.join(close)}?"
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"no {kind} matches {key!r} in {where}; known: {shown}"
