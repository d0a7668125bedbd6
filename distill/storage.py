"""Where a run directory's files go.

Atomic writes: write beside the target, then rename, so a killed run never leaves a half file
that a rerun would trust.

A bucket (`s3://`, `gs://`, any fsspec URI whose protocol is not a local file system) cannot be
written like a folder: Parquet, the trainer's checkpoints, wandb and SQLite all want a path. So
a run whose output_dir is a bucket works in a local copy (under `$DISTILL_CACHE_DIR`) and a
`Mirror` copies that folder to the bucket and back: `push` uploads what changed since the last
push, `pull` downloads what the copy lacks. A run restarted on another machine pulls first and
resumes from what the bucket holds.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import posixpath
import secrets
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

CACHE_ENV = "DISTILL_CACHE_DIR"
DEFAULT_CACHE = "~/.cache/distill/runs"
SYNC_ENV = "DISTILL_SYNC_SECONDS"
DEFAULT_SYNC_SECONDS = 60.0  # what a crash mid-stage loses at most
LOCAL_PROTOCOLS = (None, "file", "local")
# These stores show an upload under its key only once it is complete, so a crash mid-upload
# leaves the old object or none; elsewhere an upload goes to a hidden name and is then moved.
WHOLE_OBJECT_PROTOCOLS = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "memory"}
REMOVE_CHUNK = 1_000  # remote files deleted per call (S3 deletes up to 1,000 objects per request)
MIRROR_STATE = ".mirror.json"  # this copy's record of what it pushed; hidden, so never uploaded
MIRROR_LOCK = ".mirror.lock"

log = logging.getLogger(__name__)


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    _atomic(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path, data: Any) -> None:
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet(path: Path, table, **options) -> None:
    """`table` as Parquet; `options` go to pyarrow's write_table (row_group_size, compression)."""
    import pyarrow.parquet as pq

    _atomic(path, lambda tmp: pq.write_table(table, tmp, **options))


def write_parquet_batches(path: Path, schema, tables: Iterable) -> None:
    """Parquet from a stream of tables (or record batches) of `schema`, each appended as it
    comes, so the whole file is never in memory at once."""
    import pyarrow.parquet as pq

    def write(tmp):
        with pq.ParquetWriter(tmp, schema) as writer:
            for table in tables:
                writer.write(table)

    _atomic(path, write)


def protocol(uri: str) -> str | None:
    from fsspec.core import split_protocol

    return split_protocol(str(uri))[0]


def is_remote(uri: str | Path) -> bool:
    """True for a URI the run cannot write as a local folder (`s3://`, `gs://`, ...); a plain
    path or `file://` is local."""
    return protocol(str(uri)) not in LOCAL_PROTOCOLS


def local_path(uri: str | Path) -> Path:
    """A local output_dir as an absolute path: `file://` dropped, a relative path taken from here."""
    from fsspec.core import split_protocol

    path = Path(split_protocol(str(uri))[1])
    return path if path.is_absolute() else Path.cwd() / path


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def cache_dir(remote: str) -> Path:
    """This machine's working copy of a remote folder: `$DISTILL_CACHE_DIR` (default
    ~/.cache/distill/runs), then the protocol and the URI's path, so two buckets never share one."""
    from fsspec.core import split_protocol

    scheme, path = split_protocol(remote)
    parts = [p for p in path.split("/") if p]
    if ".." in parts or "." in parts:
        raise ValueError(f"{remote}: '.' or '..' in a bucket URI; name the folder plainly")
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser().resolve() / scheme / Path(*parts)


def sync_seconds() -> float:
    """How often a remote run's copy is pushed while a stage runs: `$DISTILL_SYNC_SECONDS`."""
    value = os.environ.get(SYNC_ENV)
    if not value:
        return DEFAULT_SYNC_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ValueError(f"{SYNC_ENV}={value!r}: give the seconds between pushes to the bucket, a number above 0")
    return seconds


def open_filesystem(uri: str):
    """(fsspec file system, path without protocol) for `uri`, or an error naming the package to install."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(uri)
    except ImportError as e:
        extra = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}.get(protocol(uri) or "")
        how = f"pip install 'distill[{extra}]'" if extra else "install the fsspec package for that protocol"
        raise RuntimeError(f"{uri}: {e}; {how}") from None
    except ValueError as e:  # fsspec does not know the protocol
        raise RuntimeError(f"{uri}: {e}; use a path, or a bucket URI such as s3://BUCKET/runs or gs://BUCKET/runs") \
            from None


def _hidden(rel: str) -> bool:
    """Hidden names are this machine's working files: locks, temp files (`.x.tmp`, `.student-PID`),
    the mirror's own state. They never travel."""
    return any(part.startswith(".") for part in rel.split("/"))


class Mirror:
    """A local folder kept as a copy of a remote one (any fsspec URI).

    push() uploads the files that are new or changed (size or mtime) since this copy last pushed
    or pulled them, oldest first, and removes from the remote the files it pushed that are gone
    here (old checkpoints the trainer rotated out). Oldest first matters: a marker written after
    what it marks (a checkpoint's trainer_state.json, train/summary.json) reaches the remote after
    it. pull() downloads what the remote has and this copy lacks, or holds at another size.
    Both take a file lock in the copy, so the driver's background pushes and a training worker
    on the same machine take turns.
    """

    def __init__(self, remote: str, local: Path):
        self.remote, self.local = remote.rstrip("/"), Path(local)
        self.fs, self.root = open_filesystem(self.remote)
        self.root = self.root.rstrip("/")
        self.whole_objects = bool(WHOLE_OBJECT_PROTOCOLS & set(_protocols(self.fs)))

    def __repr__(self) -> str:
        return f"Mirror({self.remote!r}, {str(self.local)!r})"

    def push(self) -> list[str]:
        """Uploads what changed; returns the relative paths uploaded."""
        with self._locked():
            state = self._read_state()
            files = self._local_files()
            changed = sorted((rel for rel, stat in files.items() if state.get(rel) != stat), key=lambda r: files[r][1])
            done: list[str] = []
            try:
                for rel in changed:
                    self._upload(rel)
                    state[rel] = files[rel]  # as listed: a file that changed since is pushed again next time
                    done.append(rel)
                gone = [r for r in state if r not in files]
                for lo in range(0, len(gone), REMOVE_CHUNK):
                    self._remove(gone[lo : lo + REMOVE_CHUNK])
                    for rel in gone[lo : lo + REMOVE_CHUNK]:
                        del state[rel]
            finally:
                self._write_state(state)
            return done

    def pull(self, only: Iterable[str] = ()) -> list[str]:
        """Downloads what this copy lacks (all of it, or the files and folders in `only`);
        returns the relative paths downloaded."""
        with self._locked():
            state = self._read_state()
            done: list[str] = []
            try:
                for rel, size in sorted(self._remote_files(only).items()):
                    target = self.local / rel
                    if not (target.is_file() and target.stat().st_size == size):
                        _atomic(target, lambda tmp: self.fs.get_file(self._remote_path(rel), tmp))
                        done.append(rel)
                        state[rel] = _stat(target)
                    else:
                        state.setdefault(rel, _stat(target))  # the same file: nothing to push back
            finally:
                self._write_state(state)
            return done

    def _remote_path(self, rel: str) -> str:
        return posixpath.join(self.root, rel)

    def _remote_files(self, only: Iterable[str]) -> dict[str, int]:
        self.fs.invalidate_cache(self.root)  # another machine may have written since we last listed
        found = {}
        for top in [self._remote_path(p.strip("/")) for p in only] or [self.root]:
            for path, info in self.fs.find(top, detail=True).items():
                rel = path.rstrip("/")[len(self.root) + 1:]
                if info.get("type") == "file" and path.startswith(self.root + "/") and not _hidden(rel):
                    found[rel] = info["size"]
        return found

    def _local_files(self) -> dict[str, list[int]]:
        files = {}
        for folder, dirs, names in os.walk(self.local):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in names:
                if name.startswith("."):
                    continue
                path = Path(folder) / name
                try:
                    files[path.relative_to(self.local).as_posix()] = _stat(path)
                except FileNotFoundError:  # removed while we looked: nothing to push
                    continue
        return files

    def _upload(self, rel: str) -> None:
        source, target = str(self.local / rel), self._remote_path(rel)
        if self.whole_objects:
            self.fs.put_file(source, target)
            return
        parent = posixpath.dirname(target)
        tmp = posixpath.join(parent, f".{posixpath.basename(target)}.{secrets.token_hex(4)}.tmp")
        self.fs.makedirs(parent, exist_ok=True)
        try:
            self.fs.put_file(source, tmp)
            self.fs.mv(tmp, target)
        except BaseException:
            if self.fs.exists(tmp):
                self.fs.rm_file(tmp)
            raise

    def _remove(self, rels: list[str]) -> None:
        """Deletes these remote files in one call, which S3's and GCS's drivers send as batch
        requests: merging the samples parts removes as many files as sampling wrote."""
        paths = [self._remote_path(rel) for rel in rels]
        try:
            self.fs.rm(paths)
        except FileNotFoundError:  # one was gone already: the rest one at a time
            for path in paths:
                try:
                    self.fs.rm_file(path)
                except FileNotFoundError:
                    pass

    def _read_state(self) -> dict[str, list[int]]:
        path = self.local / MIRROR_STATE
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:  # unreadable: every file counts as changed, the next push uploads it all again
            log.warning("%s: unreadable, starting over", path)
            return {}

    def _write_state(self, state: dict) -> None:
        write_json(self.local / MIRROR_STATE, state)

    @contextmanager
    def _locked(self):
        self.local.mkdir(parents=True, exist_ok=True)
        with open(self.local / MIRROR_LOCK, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _stat(path: Path) -> list[int]:
    s = path.stat()
    return [s.st_size, s.st_mtime_ns]


def _protocols(fs) -> tuple[str, ...]:
    return (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)


class Syncer:
    """Pushes a mirror every `every` seconds from a thread while a run's stages work, so a
    crash loses at most that long; `push()` pushes now. With no mirror (a local run) it does
    nothing. A failed background push is logged and retried at the next tick: the push at the
    end of the stage reports it."""

    def __init__(self, mirror: Mirror | None, every: float | None = None):
        self.mirror = mirror
        self.every = every if every is not None else (sync_seconds() if mirror else 0.0)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def __enter__(self) -> "Syncer":
        if self.mirror is not None:
            self.thread = threading.Thread(target=self._loop, daemon=True, name="distill-sync")
            self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()

    def push(self, failing: bool = False) -> None:
        """Pushes now; when the run is already failing, a push error is logged, not raised,
        so the run's own error is the one the user sees."""
        if self.mirror is None:
            return
        try:
            self.mirror.push()
        except Exception as e:
            if not failing:
                raise
            log.warning("could not copy %s to %s: %s", self.mirror.local, self.mirror.remote, e)

    def _loop(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.mirror.push()
            except Exception as e:  # noqa: BLE001 - a network hiccup must not stop the run
                log.warning("background copy to %s failed (retried in %.0f s): %s", self.mirror.remote, self.every, e)
