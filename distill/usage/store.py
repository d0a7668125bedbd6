"""The log store: a folder (a path or any fsspec URI) of imported calls, and the one owner of
its layout.

    STORE/manifest.json               what the store holds: its parts and every import's summary
    STORE/calls/part-<hash>.parquet   calls, CALL_SCHEMA; a part is named by the ids it holds
    STORE/clusters.json               the last task clustering's report (distill.usage.clusters)
    STORE/clusters.parquet            its cluster of every call (call_id, cluster_id), CLUSTER_SCHEMA

Parts are written first and the manifest last (each atomically), and only parts the manifest
lists are read, so an import killed half way leaves the store as it was. A store in a bucket
is worked on in a local copy ($DISTILL_CACHE_DIR) that is pulled first and pushed after the
import, as a run directory is (distill.storage.Mirror). One import at a time per copy (a lock).
"""

from __future__ import annotations

import fcntl
import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from distill import storage
from distill.lineage import digest
from distill.schema import MESSAGE

KIND = "distill usage store"
VERSION = 1
PART_ROWS = 50_000  # calls per part: a crash mid-import costs at most the part being written

REDACTION = pa.struct([("kind", pa.string()), ("path", pa.string()), ("count", pa.int32())])
CALL_SCHEMA = pa.schema([
    ("call_id", pa.string()),  # content-derived: a hash of the logged request and response, before redaction
    ("format", pa.string()),  # openai | otel
    ("source_file", pa.string()),
    ("source_line", pa.int32()),  # null for a span of a whole-file export
    ("source_span", pa.string()),  # otel: the span id
    ("imported_at", pa.timestamp("us", tz="UTC")),
    ("timestamp", pa.timestamp("us", tz="UTC")),  # when the call was made, as logged; null if not logged
    ("workload_id", pa.string()),
    ("client_id", pa.string()),
    ("model", pa.string()),
    ("response_model", pa.string()),
    ("prompt", pa.list_(MESSAGE)),  # the turns sent, redacted
    ("completion", pa.list_(MESSAGE)),  # the assistant turn that came back, redacted; empty for an error
    ("tools", pa.string()),  # JSON: the tool definitions sent; null: none
    ("request_params", pa.string()),  # JSON: the request's other fields (temperature, tool_choice, ...)
    ("finish_reason", pa.string()),
    ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()),
    ("latency_ms", pa.float64()),
    ("status", pa.string()),  # ok | error | bad-arguments | retried | by-student
    ("status_reason", pa.string()),
    ("duplicate", pa.string()),  # null | exact | near
    ("duplicate_of", pa.string()),  # the call_id of the first call of its cluster
    ("content_key", pa.string()),  # equal for equal conversations and answers: exact duplicates across imports
    ("signature", pa.binary()),  # MinHash signature (uint32s) of the text near duplicates are judged on
    ("redactions", pa.list_(REDACTION)),  # what was redacted where, never the value
])


CLUSTER_SCHEMA = pa.schema([("call_id", pa.string()), ("cluster_id", pa.string())])
CLUSTERS_FILE, ASSIGNMENTS_FILE = "clusters.json", "clusters.parquet"


class StoreError(Exception):
    """The store cannot be read or written; the message says what, where and what to do."""


@dataclass
class Index:
    """What an import needs to know of the calls already stored, in store order."""

    ids: list[str]
    content_keys: dict[str, str]  # content key -> the first call_id with it
    signatures: np.ndarray


class UsageStore:
    def __init__(self, uri: str, root: Path, mirror: storage.Mirror | None = None):
        self.uri, self.root, self.mirror = uri, root, mirror

    # -- paths --------------------------------------------------------------------------------
    manifest_path = property(lambda self: self.root / "manifest.json")
    calls_dir = property(lambda self: self.root / "calls")
    lock_path = property(lambda self: self.root / ".lock")  # hidden: never copied to a bucket
    clusters_path = property(lambda self: self.root / CLUSTERS_FILE)
    assignments_path = property(lambda self: self.root / ASSIGNMENTS_FILE)

    def part_path(self, name: str) -> Path:
        return self.calls_dir / name

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, uri: str, existing: bool = False) -> UsageStore:
        """The store at `uri`, made when the folder is new or empty (unless `existing`: then it
        must hold a store); StoreError when it is not a store."""
        uri = str(uri)
        mirror = None
        try:
            if storage.is_remote(uri):
                mirror = storage.Mirror(uri, storage.cache_dir(uri))
                mirror.pull()
                root = mirror.local
            else:
                root = storage.local_path(uri)
        except (RuntimeError, ValueError, OSError) as e:
            raise StoreError(f"{uri}: the store cannot be reached: {e}") from None
        store = cls(uri, root, mirror)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{uri}: a file, not a store folder; give a new or empty folder, or an existing store")
        if root.is_dir() and not store.manifest_path.exists() and any(not p.name.startswith(".") for p in root.iterdir()):
            raise StoreError(f"{uri}: holds files but no manifest.json, so it is not a usage store; "
                             "give a new or empty folder, or an existing store")
        if existing and not store.manifest_path.exists():
            raise StoreError(f"{uri}: no usage store here (no {store.manifest_path.name}); import logs into it first: "
                             f"distill usage import FILE... --to {uri}")
        store.read_manifest()  # fails now, before any log is read, if it is unreadable
        return store

    # -- readers ------------------------------------------------------------------------------
    def read_manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {"kind": KIND, "version": VERSION, "records": 0, "parts": [], "imports": []}
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise StoreError(f"{self.uri}: manifest.json cannot be read ({e}); restore it from a copy, "
                             "or import into a new folder") from None
        if not isinstance(manifest, dict) or manifest.get("kind") != KIND or not isinstance(manifest.get("parts"), list):
            raise StoreError(f"{self.uri}: manifest.json is not a usage store's manifest (kind {KIND!r} with a "
                             "parts list); restore it from a copy, or import into a new folder")
        if manifest.get("version", VERSION) > VERSION:
            raise StoreError(f"{self.uri}: written by a newer distill (store version {manifest['version']}); upgrade distill")
        return manifest

    def parts(self) -> list[Path]:
        return [self.part_path(p["file"]) for p in self.read_manifest()["parts"]]

    def read_calls(self, columns: list[str] | None = None) -> pa.Table:
        """Every stored call (or some columns of them), in store order."""
        tables = []
        for part in self.parts():
            try:
                tables.append(pq.read_table(part, columns=columns, schema=CALL_SCHEMA))
            except (OSError, pa.ArrowException) as e:
                raise StoreError(f"{self.uri}: {part.relative_to(self.root)} cannot be read ({e}); restore it "
                                 "from a copy, or import into a new folder") from None
        if not tables:
            empty = CALL_SCHEMA.empty_table()
            return empty.select(columns) if columns else empty
        return pa.concat_tables(tables)

    def read_index(self, num_perm: int) -> Index:
        table = self.read_calls(["call_id", "content_key", "signature"])
        ids = table.column("call_id").to_pylist()
        keys: dict[str, str] = {}
        for key, call in zip(table.column("content_key").to_pylist(), ids):
            keys.setdefault(key, call)
        blobs = table.column("signature").to_pylist()
        sig = np.frombuffer(b"".join(blobs), np.uint32).reshape(len(blobs), num_perm) if blobs else \
            np.empty((0, num_perm), np.uint32)
        return Index(ids, keys, sig)

    def read_assignments(self) -> dict[str, str]:
        """call_id -> cluster_id of the last clustering; empty when there was none or it cannot be read
        (the ids it would keep stable are then derived anew)."""
        if not self.assignments_path.exists():
            return {}
        try:
            table = pq.read_table(self.assignments_path, schema=CLUSTER_SCHEMA)
        except (OSError, pa.ArrowException):
            return {}
        return dict(zip(table.column("call_id").to_pylist(), table.column("cluster_id").to_pylist()))

    # -- writers (atomic) ---------------------------------------------------------------------
    def write_clusters(self, report: dict, assignments: dict[str, str]) -> None:
        """The clustering's report and every call's cluster; copied to the bucket of a remote store."""
        table = pa.table({"call_id": list(assignments), "cluster_id": list(assignments.values())}, schema=CLUSTER_SCHEMA)
        storage.write_parquet(self.assignments_path, table)
        storage.write_json(self.clusters_path, report)
        self._push("the clusters are", "run `distill usage clusters` again to copy them")

    def write_part(self, rows: list[dict]) -> dict:
        """One part of calls; returns its manifest entry."""
        name = f"part-{digest(sorted(r['call_id'] for r in rows))}.parquet"
        storage.write_parquet(self.part_path(name), pa.Table.from_pylist(rows, schema=CALL_SCHEMA))
        return {"file": name, "records": len(rows)}

    def commit(self, parts: list[dict], record: dict) -> dict:
        """Lists the new parts and this import in the manifest (the import's last write), and
        copies the store to its bucket."""
        manifest = self.read_manifest()
        manifest["parts"] += parts
        manifest["records"] = sum(p["records"] for p in manifest["parts"])
        manifest["imports"].append(record)
        storage.write_json(self.manifest_path, manifest)
        self._push("the import is", "run the import again to copy it")
        return manifest

    def _push(self, what_is: str, fix: str) -> None:
        """A store in a bucket: the local copy's new files copied to it."""
        if self.mirror is None:
            return
        try:
            self.mirror.push()
        except Exception as e:  # noqa: BLE001 - the local copy holds the work; say where
            raise StoreError(f"{self.uri}: {what_is} in the local copy {self.root} but could not be copied "
                             f"to the bucket ({e}); {fix}") from None

    @contextmanager
    def locked(self):
        """One import at a time: two at once would both add the same calls."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            f = open(self.lock_path, "a")
        except OSError as e:
            raise StoreError(f"{self.uri}: cannot be written ({e}); give a folder you can write to") from None
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{self.uri}: another import is writing to this store; wait for it to finish") from None
            yield
