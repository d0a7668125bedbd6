"""The lineage store's database: its two tables, where it lives, opening it, and writing rows.

A store is an SQLAlchemy engine whose database has the `artifacts` and `edges` tables. An SQLite
file beside the runs by default; any SQLAlchemy URL through `DISTILL_LINEAGE_URL`.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import JSON, Column, DateTime, Engine, ForeignKey, MetaData, String, Table, and_, create_engine, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url

ENV_URL = "DISTILL_LINEAGE_URL"
# Also the order rows are shown in at the same depth: sources first, products last.
KINDS = ("run", "licence", "teacher", "base_model", "prompt_source", "samples", "dataset", "model")
# An edge reads "child RELATION parent".
RELATIONS = ("sampled-from", "prompts-from", "built-from", "trained-on", "fine-tuned-from", "licensed-under",
             "produced-by", "evaluated-on")

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


def row_counts(conn) -> dict[str, int]:
    """Rows in each table, by table name."""
    return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in (artifacts, edges)}


_INSERTS = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}  # both speak INSERT .. ON CONFLICT


def upsert(conn, table: Table, row: dict, update: tuple[str, ...] = ()) -> None:
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
