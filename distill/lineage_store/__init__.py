"""The lineage store: every run's artifacts and their parents, across runs, in one database.

An SQLite file beside the runs by default; any SQLAlchemy URL (PostgreSQL for a team) through
`DISTILL_LINEAGE_URL`. It answers what derives from a teacher, dataset or licence (to act on a
licence change or a takedown) and where a model came from. Everything registered is read
from the run directory alone, so a run can be registered again, anywhere, at any time.

Artifact ids are derived from content (a dataset's content hash, a model's weights hash, a
run's recipe hash), so two runs that made the same dataset share one artifact, and registering
twice adds nothing. An edge reads "child RELATION parent": samples sampled-from teacher.

The package in layers: `tables` (the database), `registration` (a run directory into artifacts
and edges), `queries` (descendants and ancestry) and `command` (`distill lineage`).
"""

from distill.lineage_store.command import lineage_command, render_table, to_json
from distill.lineage_store.queries import Lineage, ancestry, descendants
from distill.lineage_store.registration import read_run_dir, register_run
from distill.lineage_store.tables import (
    ENV_URL, KINDS, RELATIONS, Store, artifacts, default_url, edges, metadata, open_store,
)

__all__ = [
    "ENV_URL", "KINDS", "RELATIONS", "Lineage", "Store", "ancestry", "artifacts", "default_url", "descendants", "edges",
    "lineage_command", "metadata", "open_store", "read_run_dir", "register_run", "render_table", "to_json",
]
