"""The lineage store: every run's artifacts and their parents, across runs, in one database.

An SQLite file beside the runs by default; any SQLAlchemy URL (PostgreSQL for a team) through
`DISTILL_LINEAGE_URL`. It answers what derives from a teacher, dataset or licence (to act on a
licence change or a takedown) and where a model came from. Everything registered is read
from the run directory alone, so a run can be registered again, anywhere, at any time.

Artifact ids are derived from content (a dataset's content hash, a model's weights hash, a
run's recipe hash), so two runs that made the same dataset share one artifact, and registering
twice adds nothing. An edge reads "child RELATION parent": samples sampled-from teacher.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml
from sqlalchemy import JSON, Column, DateTime, Engine, ForeignKey, MetaData, String, Table, and_, create_engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

from distill.lineage import digest

ENV_URL = "DISTILL_LINEAGE_URL"
# Also the order rows are shown in at the same depth: sources first, products last.
KINDS = ("run", "licence", "teacher", "base_model", "prompt_source", "samples", "dataset", "model")
# An edge reads "child RELATION parent".
RELATIONS = ("sampled-from", "prompts-from", "built-from", "trained-on", "fine-tuned-from", "licensed-under",
             "produced-by")

metadata = MetaData()
artifacts = Table(
    "artifacts", metadata,
    Column("id", String(160), primary_key=True),  # "<kind>:<content key>"
    Column("kind", String(32), nullable=False, index=True),
    Column("name", String(512), nullable=False, index=True),
    Column("version", String(128)),  # revision, content hash or weights hash
    Column("licence", String(128)),
    Column("run_id", String(64)),  # the run that first registered it
    Column("attrs", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
edges = Table(
    "edges", metadata,
    Column("child", String(160), ForeignKey("artifacts.id"), primary_key=True),
    Column("parent", String(160), ForeignKey("artifacts.id"), primary_key=True, index=True),
    Column("relation", String(32), primary_key=True),
)

Store = Engine  # a store is just an engine whose database has the two tables


def default_url(runs_dir: str | Path = "runs") -> str:
    """`DISTILL_LINEAGE_URL`, else an SQLite file in the runs directory (the recipe's output_dir).
    For a bucket, the file is in this machine's local copy of it (storage.cache_dir): SQLite
    cannot live in an object store, and the store belongs to the driver, never to the workers."""
    if os.environ.get(ENV_URL):
        return os.environ[ENV_URL]
    from distill import storage

    folder = storage.cache_dir(str(runs_dir)) if storage.is_remote(runs_dir) else storage.local_path(runs_dir)
    return f"sqlite:///{folder.resolve() / 'lineage.sqlite'}"


def open_store(url: str | None = None, runs_dir: str | Path = "runs") -> Store:
    """The store at `url` (default: `default_url(runs_dir)`), its tables created when missing."""
    url = url or default_url(runs_dir)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)  # SQLite makes the file, not the folder
    engine = create_engine(url)
    metadata.create_all(engine)
    return engine


def _id(kind: str, *identity: object) -> str:
    return f"{kind}:{digest(*identity)}"


@dataclass
class _Batch:
    """What one run directory says, before it is written."""

    artifacts: dict[str, dict]
    edges: set[tuple[str, str, str]]

    def add(self, id_: str, kind: str, name: str, version=None, licence=None, run_id=None, **attrs) -> str:
        self.artifacts[id_] = {"id": id_, "kind": kind, "name": name, "version": version, "licence": licence,
                               "run_id": run_id, "attrs": attrs}
        return id_

    def link(self, child: str, relation: str, parent: str) -> None:
        assert relation in RELATIONS, relation
        self.edges.add((child, parent, relation))

    def licence(self, child: str, licence: str | None) -> None:
        if licence:
            self.link(child, "licensed-under", self.add(f"licence:{licence.lower()}", "licence", licence))


def read_run_dir(run_dir: Path) -> _Batch:
    """The artifacts and edges a run directory records; stages that have not run are skipped."""
    run_dir = Path(run_dir)
    resolved_file = run_dir / "recipe.resolved.yaml"
    if not resolved_file.is_file():
        raise FileNotFoundError(f"{run_dir}: not a distill run directory (no recipe.resolved.yaml); "
                                "give a directory runs/<recipe>/<run id>/ that `distill run` made")
    resolved = yaml.safe_load(resolved_file.read_text())
    recipe, run_id, recipe_hash = resolved["recipe"], resolved["run_id"], resolved["recipe_hash"]
    b = _Batch({}, set())
    run = b.add(f"run:{recipe_hash}", "run", recipe["name"], recipe_hash, None, run_id, path=str(run_dir),
                code_version=resolved["code_version"], samples_key=resolved["samples_key"])

    samples = _samples(run_dir)
    if samples is not None:
        count, teachers, prompts, replicas = samples
        s = b.add(f"samples:{recipe_hash}", "samples", f"{recipe['name']}-samples-{run_id}", resolved["samples_key"],
                  None, run_id, count=count, replicas=replicas)
        b.link(s, "produced-by", run)
        for t in teachers:
            tid = b.add(_id("teacher", t["teacher_id"], t["teacher_model"], t["teacher_revision"]), "teacher",
                        t["teacher_id"], t["teacher_revision"], t["teacher_licence"], model=t["teacher_model"])
            b.licence(tid, t["teacher_licence"])
            b.link(s, "sampled-from", tid)
        for p in prompts:
            pid = b.add(_id("prompt_source", p["prompt_source"], p["prompt_licence"]), "prompt_source",
                        p["prompt_source"], None, p["prompt_licence"])
            b.licence(pid, p["prompt_licence"])
            b.link(s, "prompts-from", pid)

    manifest = _json(run_dir / "dataset" / "manifest.json")
    dataset = None
    if manifest is not None:
        from distill.stages.card import dataset_name

        dataset = b.add(f"dataset:{manifest['content_sha256']}", "dataset", dataset_name(resolved, manifest),
                        manifest["content_sha256"], None, run_id, rows=manifest["rows"],
                        prompt_licences=manifest["prompt_licences"])
        b.link(dataset, "produced-by", run)
        if samples is not None:
            b.link(dataset, "built-from", f"samples:{recipe_hash}")

    summary = _json(run_dir / "train" / "summary.json")
    if summary is not None and dataset is not None:
        base = summary["base"]
        bid = b.add(_id("base_model", base["id"], base["model"], base["revision"]), "base_model", base["id"],
                    base["revision"], base["licence"], model=base["model"], params_b=base.get("params_b"))
        b.licence(bid, base["licence"])
        lin = _json(run_dir / "lineage.json") or {}
        terms = _student_terms(run_dir, lin)
        # A hub `other` licence is known by its name (qwen, nvidia-open-model-license), as teachers name it.
        licence = (terms.get("license_name") if terms.get("license") == "other" else terms.get("license")) or base["licence"]
        evaluation = _json(run_dir / "eval.json")
        model = b.add(f"model:{summary['weights_sha256']}", "model", recipe["student"]["name"], summary["weights_sha256"],
                      licence, run_id, path=str(run_dir / "student"), method=summary["method"], steps=summary["steps"],
                      train_loss=summary["train_loss"], params_b=lin.get("model", {}).get("params_b"),
                      non_commercial=terms.get("non_commercial"), name_prefix=terms.get("name_prefix"),
                      eval={k: evaluation["student"][k] for k in ("pass@1", "pass@k", "greedy_accuracy")}
                      if evaluation else None)
        b.link(model, "trained-on", dataset)
        b.link(model, "fine-tuned-from", bid)
        b.link(model, "produced-by", run)
        for governing in terms.get("governed_by") or [licence]:  # the licence ids whose terms bind the weights
            b.licence(model, governing)
    return b


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _student_terms(run_dir: Path, lin: dict) -> dict:
    """The student's licence as the engine derived it: lineage.json's, else licence.json's; {} without either."""
    if lin.get("licence"):
        return lin["licence"]
    decision = _json(run_dir / "licence.json") or {}
    if not decision.get("student_licence"):
        return {}
    return decision["student_licence"] | {k: decision.get(k) for k in ("non_commercial", "name_prefix")}


def _samples(run_dir: Path):
    """(count, distinct teachers, distinct prompt sources, samples per engine replica), reading only
    those columns; None before sampling."""
    from distill.stages.sample import read_samples

    teacher_cols = ["teacher_id", "teacher_model", "teacher_revision", "teacher_licence"]
    prompt_cols = ["prompt_source", "prompt_licence"]
    table = read_samples(run_dir, teacher_cols + prompt_cols + ["replica"])
    if table.num_rows == 0:
        return None
    replicas: dict[str, int] = {}
    for name in table["replica"].to_pylist():  # null: a backend that does not say (HTTP, older runs)
        if name:
            replicas[name] = replicas.get(name, 0) + 1

    def distinct(cols):
        return sorted(table.select(cols).group_by(cols).aggregate([]).to_pylist(), key=lambda r: [r[c] for c in cols])

    return table.num_rows, distinct(teacher_cols), distinct(prompt_cols), dict(sorted(replicas.items()))


def register_run(store: Store, run_dir: Path) -> dict[str, int]:
    """Registers what the run directory holds; returns how many artifacts and edges were new.

    Idempotent: an artifact already known keeps its id, name, first run and creation time;
    only its attributes are refreshed (a resumed run has more samples, an evaluated model
    its scores). One transaction, so a failed registration leaves nothing half-written.
    """
    batch = read_run_dir(run_dir)
    now = datetime.now(timezone.utc)
    with store.begin() as conn:
        before = _counts(conn)
        for row in sorted(batch.artifacts.values(), key=lambda a: a["id"]):
            _upsert(conn, artifacts, row | {"created_at": now}, update=("attrs",))
        for child, parent, relation in sorted(batch.edges):
            _upsert(conn, edges, {"child": child, "parent": parent, "relation": relation})
        after = _counts(conn)
    return {table: after[table] - before[table] for table in after}


def _counts(conn) -> dict[str, int]:
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in (artifacts, edges)}


_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # both speak INSERT .. ON CONFLICT


def _upsert(conn, table: Table, row: dict, update: tuple[str, ...] = ()) -> None:
    """Insert; on an existing key update only the `update` columns. Safe against a concurrent register."""
    keys = [c.name for c in table.primary_key]
    insert = _INSERTS.get(conn.dialect.name)
    if insert is not None:
        stmt = insert(table).values(row)
        stmt = (stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update}) if update
                else stmt.on_conflict_do_nothing(index_elements=keys))
        conn.execute(stmt)
        return
    where = and_(*(table.c[k] == row[k] for k in keys))
    if conn.execute(select(table.c[keys[0]]).where(where)).first() is None:
        conn.execute(table.insert().values(row))
    elif update:
        conn.execute(table.update().where(where).values({c: row[c] for c in update}))


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
        everything = {r.id: r._asdict() for r in conn.execute(select(artifacts).where(artifacts.c.id.in_(list(seen))))}
    rows = [_row(everything, seen, id_) for id_ in seen]
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


def render_table(rows: list[dict], title: str | None = None):
    """A rich Table, indented by depth; hashes are shortened (JSON has them whole)."""
    from rich.table import Table as RichTable

    table = RichTable(title=title)
    for column in ("kind", "name", "version", "licence", "run", "relation", "via"):
        table.add_column(column, overflow="fold")
    for r in rows:
        version = r["version"] or ""
        short = version[:12] + "…" if re.fullmatch(r"[0-9a-f]{17,}", version) else version
        table.add_row("  " * r["depth"] + r["kind"], r["name"], short,
                      r["licence"] or "", r["run_id"] or "", r["relation"] or "", r["via"] or "")
    return table


def to_json(rows: list[dict]) -> str:
    return json.dumps(list(rows), indent=2, sort_keys=True, default=str)


def lineage_command(teacher: str | None = None, dataset: str | None = None, licence: str | None = None,
                    model: str | None = None, json_out: bool = False, store_url: str | None = None,
                    runs_dir: str = "runs") -> None:
    """`distill lineage`: what derives from a teacher, dataset or licence, or a model's ancestry.

    Exits 2 unless exactly one question is asked, 1 when nothing matches (the hint goes to stderr).
    """
    import typer
    from rich.console import Console

    err = Console(stderr=True)
    asked = {k: v for k, v in (("teacher", teacher), ("dataset", dataset), ("licence", licence), ("model", model)) if v}
    if len(asked) != 1:
        err.print("give exactly one of --teacher, --dataset, --licence, --model"
                  + (f" (got {', '.join('--' + k for k in asked)})" if asked else ""), style="bold red", highlight=False)
        raise typer.Exit(2)
    (kind, key), = asked.items()
    store = open_store(store_url, runs_dir)
    rows = ancestry(store, key) if kind == "model" else descendants(store, kind, key)
    if json_out:
        typer.echo(to_json(rows))
    elif rows:
        what = f"ancestry of model {key}" if kind == "model" else f"what derives from {kind} {key}"
        Console().print(render_table(rows, title=what))
    if rows.hint:
        err.print(rows.hint, markup=False, highlight=False, soft_wrap=True)
    if not rows:
        raise typer.Exit(1)
