"""The run: its directory, made or resumed, and the one owner of that directory's layout.

The run id is derived from the recipe's content hash: the same recipe (and the same prompt
files) resumes the same run; a changed recipe is a new run beside it. `RunDir` names every
file of a run directory and reads and writes them; nothing else spells a path inside one.
Writes are atomic (write, then rename), so a killed run never leaves a half file.

When the recipe's output_dir is a bucket (s3://, gs://, ...), the stages work in a local copy
of the run directory (storage.cache_dir) that is pulled from the bucket first.

Sampling writes one samples part per batch, so a large run holds many small parts; once
sampling is done they are merged into a few large ones (`compact_samples`), and the samples are
read as a stream (`iter_samples`, `iter_samples_in_order`), never as Python rows all at once.
"""

from __future__ import annotations

import heapq
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from distill import storage
from distill.lineage import code_version, digest
from distill.recipe import Recipe
from distill.schema import (DATASET_SCHEMA, DECISIONS_SCHEMA, EVAL_SCHEMA, LOGPROBS_SCHEMA, PROBE_ANSWER_SCHEMA,
                            PROMPT_SCHEMA, SAMPLE_SCHEMA, STUDENT_META_FILE)
from distill.teachers import Teacher

# A merged samples part: `part-merged-<digest of the parts it holds>.parquet`, sorted by prompt id
# and sample index, the names of the parts it holds in its metadata.
MERGED_PREFIX = "part-merged-"
MERGED_FROM = b"distill.merged_from"
# Rows per merged part: few enough parts for an ordered reader to hold one row group of each at
# once (77 for 1e7 samples, against 156,250 batches of 64), and a merge holds one part in memory.
COMPACT_ROWS = 131_072
# What an ordered reader holds of each merged part at once (one row group).
ROW_GROUP_ROWS = 4_096
STREAM_ROWS = 65_536  # rows per batch of a streamed read
SAMPLE_ORDER = [("prompt_id", "ascending"), ("sample_index", "ascending")]


def _order(row: dict) -> tuple:
    return row["prompt_id"], row["sample_index"]


def _tables(rows: Iterable[dict], schema: pa.Schema, chunk: int = 8_192) -> Iterator[pa.Table]:
    """Dict rows as tables of up to `chunk` rows, for a streaming writer."""
    batch = []
    for row in rows:
        batch.append(row)
        if len(batch) == chunk:
            yield pa.Table.from_pylist(batch, schema=schema)
            batch = []
    if batch:
        yield pa.Table.from_pylist(batch, schema=schema)


class RunDir:
    """The layout of a run directory: named paths, readers and atomic writers."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths --------------------------------------------------------------------------------
    resolved_recipe = property(lambda self: self.root / "recipe.resolved.yaml")
    licence = property(lambda self: self.root / "licence.json")
    teacher_probes = property(lambda self: self.root / "teacher_probes.json")
    lock = property(lambda self: self.root / ".lock")
    samples_dir = property(lambda self: self.root / "samples")
    attempts = property(lambda self: self.samples_dir / "attempts.json")
    logprobs_dir = property(lambda self: self.samples_dir / "logprobs")
    filters_dir = property(lambda self: self.root / "filters")
    decisions = property(lambda self: self.filters_dir / "decisions.parquet")
    filter_summary = property(lambda self: self.filters_dir / "summary.json")
    dataset_dir = property(lambda self: self.root / "dataset")
    dataset = property(lambda self: self.dataset_dir / "train.parquet")
    manifest = property(lambda self: self.dataset_dir / "manifest.json")
    dataset_card = property(lambda self: self.dataset_dir / "README.md")
    pairs = property(lambda self: self.dataset_dir / "pairs.parquet")  # dpo, sft+dpo: chosen and rejected
    unpaired = property(lambda self: self.dataset_dir / "unpaired.parquet")  # kto: completions labelled good or bad
    train_dir = property(lambda self: self.root / "train")
    train_summary = property(lambda self: self.train_dir / "summary.json")
    checkpoints = property(lambda self: self.train_dir / "checkpoints")
    deepspeed_config = property(lambda self: self.train_dir / "deepspeed.json")
    sft_phase_dir = property(lambda self: self.train_dir / "sft")  # sft+dpo: the supervised phase
    sft_phase_model = property(lambda self: self.sft_phase_dir / "model")
    sft_phase_checkpoints = property(lambda self: self.sft_phase_dir / "checkpoints")
    sft_phase_summary = property(lambda self: self.sft_phase_dir / "summary.json")
    student_dir = property(lambda self: self.root / "student")
    student_meta = property(lambda self: self.student_dir / STUDENT_META_FILE)
    model_card = property(lambda self: self.student_dir / "README.md")
    eval_dir = property(lambda self: self.root / "eval")
    metrics = property(lambda self: self.root / "eval.json")
    lineage = property(lambda self: self.root / "lineage.json")
    report = property(lambda self: self.root / "report.html")

    def prompts(self, split: str) -> Path:
        return self.root / "prompts" / f"{split}.parquet"

    def eval_answers(self, role: str) -> Path:
        return self.eval_dir / f"{role}.parquet"

    def probe_answers(self, role: str) -> Path:
        return self.eval_dir / "probes" / f"{role}.parquet"

    def sample_parts(self) -> list[Path]:
        """The samples parts in name order. A part already merged into another is left out, even
        while it still exists (a merge cut short before it removed what it merged)."""
        parts = sorted(self.samples_dir.glob("part-*.parquet"))
        merged = set().union(*(self._merged_from(p) for p in parts if p.name.startswith(MERGED_PREFIX)))
        return [p for p in parts if p.name not in merged]

    @staticmethod
    def _merged_from(part: Path) -> set[str]:
        return set(json.loads((pq.read_schema(part).metadata or {}).get(MERGED_FROM, b"[]")))

    def sample_part(self, work_ids: list[str]) -> Path:
        """The samples part of a batch, named by the work it holds."""
        return self.samples_dir / f"part-{digest(sorted(work_ids))}.parquet"

    def logprob_part(self, sample_part: Path) -> Path:
        """The teacher's log-probabilities of a samples part's rows (sampling.logprobs): same name."""
        return self.logprobs_dir / sample_part.name

    def remove_unfinished_writes(self) -> int:
        """Deletes the temporary files of part writes a killed sampler left (`.part-*.tmp`); call it
        holding the run's lock, when no write can be under way. Returns how many there were."""
        stale = [p for d in (self.samples_dir, self.logprobs_dir) if d.is_dir() for p in d.glob(".part-*.tmp")]
        for p in stale:
            p.unlink(missing_ok=True)
        return len(stale)

    def logprob_parts(self) -> list[Path]:
        """The log-probability parts whose samples part exists. One without (the sampler was killed
        between the two writes) is left over: its work is sampled again, into another part."""
        return [p for p in map(self.logprob_part, self.sample_parts()) if p.is_file()]

    def student_staging(self) -> Path:
        """Where a student is written before its one rename into student/."""
        return self.root / f".student-{os.getpid()}"

    def relative(self, *paths: Path) -> list[str]:
        """The paths inside the run directory, as the mirror names them."""
        return [p.relative_to(self.root).as_posix() for p in paths]

    def trained(self) -> bool:
        """A finished training: its summary and a complete student/ (written in one rename)."""
        return self.train_summary.is_file() and (self.student_dir / "config.json").is_file()

    # -- readers ------------------------------------------------------------------------------
    @staticmethod
    def read_json(path: Path) -> Any:
        """The file's JSON, or None when it does not exist (the stage that writes it has not run)."""
        return json.loads(path.read_text()) if path.is_file() else None

    def read_resolved(self) -> dict:
        return yaml.safe_load(self.resolved_recipe.read_text())

    def read_prompts(self, split: str, columns: list[str] | None = None) -> list[dict]:
        return pq.read_table(self.prompts(split), columns=columns).to_pylist()

    def read_samples(self, columns: list[str] | None = None) -> pa.Table:
        parts = self.sample_parts()
        if not parts:
            return SAMPLE_SCHEMA.empty_table().select(columns) if columns else SAMPLE_SCHEMA.empty_table()
        return _parquet_dataset(parts, SAMPLE_SCHEMA).to_table(columns=columns)

    def iter_samples(self, columns: list[str], batch_rows: int = STREAM_ROWS) -> Iterator[pa.RecordBatch]:
        """The samples' `columns`, a batch at a time, in no particular order: for counting and
        other passes that need not hold every row."""
        parts = self.sample_parts()
        if parts:
            yield from _parquet_dataset(parts, SAMPLE_SCHEMA).to_batches(columns=columns, batch_size=batch_rows)

    def iter_samples_in_order(self, columns: list[str]) -> Iterator[dict]:
        """Every sample as a dict of `columns` (prompt_id and sample_index always among them), in
        (prompt id, sample index) order, streamed: a merged part is stored in that order and read
        a row group at a time, a small part is sorted whole, and the parts are merged. Meant for
        a compacted run (`compact_samples`): each small part is held whole."""
        columns = list(dict.fromkeys([*columns, "prompt_id", "sample_index"]))
        return heapq.merge(*(self._rows_in_order(p, columns) for p in self.sample_parts()), key=_order)

    @staticmethod
    def _rows_in_order(part: Path, columns: list[str]) -> Iterator[dict]:
        if not part.name.startswith(MERGED_PREFIX):
            table = _parquet_dataset([part], SAMPLE_SCHEMA).to_table(columns=columns)
            yield from table.sort_by(SAMPLE_ORDER).to_pylist()
            return
        # A plain file reader holds less than a dataset scan; a column the part lacks is null.
        f = pq.ParquetFile(part)
        missing = dict.fromkeys(c for c in columns if c not in f.schema_arrow.names)
        for batch in f.iter_batches(batch_size=256, columns=[c for c in columns if c not in missing]):
            for row in batch.to_pylist():
                yield row | missing if missing else row

    def read_sample_part(self, part: Path) -> list[dict]:
        return pq.read_table(part, schema=SAMPLE_SCHEMA).to_pylist()

    def read_logprobs(self, sample_ids: set[str] | None = None) -> tuple[dict[str, dict], list[Path]]:
        """sample id -> its encoded LOGPROBS_SCHEMA row (distill.training.logits.decode reads it),
        for the given samples or all; and the parts that held any of them."""
        rows: dict[str, dict] = {}
        read = []
        for part in self.logprob_parts():
            table = pq.read_table(part, schema=LOGPROBS_SCHEMA)
            found = [r for r in table.to_pylist() if sample_ids is None or r["sample_id"] in sample_ids]
            if found:
                read.append(part)
                rows.update((r["sample_id"], r) for r in found)
        return rows, read

    def read_attempts(self) -> list[dict]:
        return self.read_json(self.attempts) or []

    def read_decisions(self) -> dict[str, dict] | None:
        """sample_id -> {kept, completion, decisions}; None when the filter stage has not run."""
        if not self.decisions.is_file():
            return None
        return {r["sample_id"]: r for r in pq.read_table(self.decisions, schema=DECISIONS_SCHEMA).to_pylist()}

    def iter_decisions(self) -> Iterator[dict] | None:
        """The filter decisions in the order they were written (the filter stage's candidates, by
        prompt id and sample index), streamed; None when the filter stage has not run."""
        if not self.decisions.is_file():
            return None
        batches = pq.ParquetFile(self.decisions).iter_batches(batch_size=1_024)
        return (row for batch in batches for row in batch.to_pylist())

    def read_dataset(self, limit: int | None = None) -> pa.Table:
        """The dataset, or its first `limit` rows (read no further)."""
        if limit is None:
            return pq.read_table(self.dataset)
        first = next(pq.ParquetFile(self.dataset).iter_batches(batch_size=max(1, limit)), None)
        table = pa.Table.from_batches([first]) if first is not None else pq.read_schema(self.dataset).empty_table()
        return table.slice(0, limit)

    def read_eval_answers(self, role: str) -> pa.Table | None:
        path = self.eval_answers(role)
        return pq.read_table(path) if path.is_file() else None

    def read_probe_answers(self, role: str) -> pa.Table | None:
        path = self.probe_answers(role)
        return pq.read_table(path) if path.is_file() else None

    # -- writers (atomic) ---------------------------------------------------------------------
    write_json = staticmethod(storage.write_json)
    write_text = staticmethod(storage.write_text)

    def write_prompts(self, split: str, rows: list[dict]) -> None:
        storage.write_parquet(self.prompts(split), pa.Table.from_pylist(rows, schema=PROMPT_SCHEMA))

    def write_sample_part(self, work_ids: list[str], rows: list[dict]) -> Path:
        """A part named by the work it holds, so the same batch written twice is one file."""
        part = self.sample_part(work_ids)
        self.rewrite_sample_part(part, rows)
        return part

    def write_logprob_part(self, work_ids: list[str], rows: list[tuple]) -> Path:
        """The teacher's log-probabilities of a batch, (sample id, TeacherTokens) pairs, under the
        name its samples part will have. Written first: a samples part that exists has its
        log-probabilities beside it. zstd: the packed arrays compress far better than with snappy."""
        from distill.training import logits

        part = self.logprob_part(self.sample_part(work_ids))
        table = logits.table(rows)
        storage._atomic(part, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
        return part

    def rewrite_sample_part(self, part: Path, rows: list[dict]) -> None:
        # By rename: a part hard-linked from a sibling run keeps its old content there. A merged
        # part keeps its metadata (the parts it holds).
        held = (pq.read_schema(part).metadata or {}).get(MERGED_FROM) if part.is_file() else None
        schema = SAMPLE_SCHEMA.with_metadata({MERGED_FROM: held}) if held else SAMPLE_SCHEMA
        storage.write_parquet(part, pa.Table.from_pylist(rows, schema=schema), row_group_size=ROW_GROUP_ROWS)

    def compact_samples(self, rows_per_part: int = COMPACT_ROWS) -> int:
        """Merges the small parts sampling wrote (one per batch) into parts of about
        `rows_per_part` rows, each sorted by prompt id and sample index; their log-probabilities
        go into one part of the same name. Returns how many parts were merged.

        For when sampling is done: a part is named by the batch it holds, and after the merge a
        batch written again would be a second copy. Safe to kill: a merged part holds the names
        of the parts it replaces, which readers skip from the moment it exists, and which are
        removed after it is written (here, or by the next call when it was cut short)."""
        self._remove_merged_sources()
        group: list[tuple[Path, pa.Table]] = []
        merged = rows = 0
        for part in [p for p in self.sample_parts() if not p.name.startswith(MERGED_PREFIX)]:
            group.append((part, pq.read_table(part, schema=SAMPLE_SCHEMA)))
            rows += group[-1][1].num_rows
            if rows >= rows_per_part:
                merged += self._merge(group)
                group, rows = [], 0
        if len(group) > 1:
            merged += self._merge(group)
        return merged

    def _merge(self, group: list[tuple[Path, pa.Table]]) -> int:
        names = sorted(p.name for p, _ in group)
        target = self.samples_dir / f"{MERGED_PREFIX}{digest(names)}.parquet"
        logprobs = [self.logprob_part(p) for p, _ in group if self.logprob_part(p).is_file()]
        if logprobs:  # first: a samples part that exists has its log-probabilities beside it
            table = pa.concat_tables(pq.read_table(p, schema=LOGPROBS_SCHEMA) for p in logprobs)
            storage.write_parquet(self.logprob_part(target), table, compression="zstd")
        table = pa.concat_tables(t for _, t in group).combine_chunks()  # one chunk: take is far faster
        order = pc.sort_indices(table, SAMPLE_ORDER)  # written a row group at a time: no sorted copy in memory
        storage.write_parquet_batches(target, SAMPLE_SCHEMA.with_metadata({MERGED_FROM: json.dumps(names)}), (
            table.take(order[lo : lo + ROW_GROUP_ROWS]) for lo in range(0, len(order), ROW_GROUP_ROWS)))
        for part, _ in group:
            part.unlink()
            self.logprob_part(part).unlink(missing_ok=True)
        return len(group)

    def _remove_merged_sources(self) -> None:
        """Removes the parts a merged part holds that are still there (a merge cut short)."""
        for merged in self.samples_dir.glob(f"{MERGED_PREFIX}*.parquet"):
            for name in self._merged_from(merged):
                (self.samples_dir / name).unlink(missing_ok=True)
                (self.logprobs_dir / name).unlink(missing_ok=True)

    def append_attempt(self, record: dict) -> None:
        storage.write_json(self.attempts, self.read_attempts() + [record])

    def write_decisions(self, rows: Iterable[dict]) -> None:
        """Written as the rows come (a list or a generator): never all of them in Arrow at once."""
        storage.write_parquet_batches(self.decisions, DECISIONS_SCHEMA, _tables(rows, DECISIONS_SCHEMA))

    def write_dataset(self, rows: Iterable[dict]) -> None:
        """Written as the rows come (a list or a generator): never all of them in Arrow at once."""
        storage.write_parquet_batches(self.dataset, DATASET_SCHEMA, _tables(rows, DATASET_SCHEMA))

    def write_eval_answers(self, role: str, rows: list[dict]) -> pa.Table:
        table = pa.Table.from_pylist(rows, schema=EVAL_SCHEMA)
        storage.write_parquet(self.eval_answers(role), table)
        return table

    def write_probe_answers(self, role: str, rows: list[dict]) -> pa.Table:
        table = pa.Table.from_pylist(rows, schema=PROBE_ANSWER_SCHEMA)
        storage.write_parquet(self.probe_answers(role), table)
        return table


def _parquet_dataset(paths: list[Path], schema: pa.Schema):
    """Parquet files read as one, under `schema`: a column a file lacks (written by an older
    version) reads as nulls."""
    import pyarrow.dataset as ds

    return ds.dataset([str(p) for p in paths], schema=schema, format="parquet")


@dataclass
class Run:
    recipe: Recipe
    teacher: Teacher
    dir: Path  # where the stages read and write: the run directory, or the local copy of a remote one
    id: str
    recipe_hash: str
    code_version: str
    remote: str | None = None  # the run directory's URI when output_dir is a bucket

    @property
    def files(self) -> RunDir:
        return RunDir(self.dir)

    def mirror(self) -> storage.Mirror | None:
        """The mirror between a remote run directory and its local copy; None for a local run."""
        return storage.Mirror(self.remote, self.dir) if self.remote else None


def open_run(recipe: Recipe) -> Run:
    """The run directory of this recipe, made or resumed; a remote one is pulled into its local copy first."""
    recipe_hash = recipe.content_hash()
    run_id = recipe_hash[:12]
    remote = None
    if storage.is_remote(recipe.output_dir):
        remote = storage.join(recipe.output_dir, recipe.name, run_id)
        run_dir = storage.cache_dir(remote)
        storage.Mirror(remote, run_dir).pull()
    else:
        run_dir = storage.local_path(recipe.output_dir) / recipe.name / run_id
    teacher = recipe.teacher_entry
    run = Run(recipe, teacher, run_dir, run_id, recipe_hash, code_version(), remote)
    resolved = {
        "recipe_hash": recipe_hash,
        "samples_key": recipe.samples_key(),
        "run_id": run_id,
        "code_version": run.code_version,
        "recipe": recipe.resolved(),
        "teacher": teacher.model_dump(mode="json"),
    }
    if not run.files.resolved_recipe.exists():
        storage.write_text(run.files.resolved_recipe, yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
    return run


class RunBusy(RuntimeError):
    pass


def lock(run: Run):
    """One process per run directory: two at once would sample the same work twice. The lock is
    released when the returned file is closed (a killed process releases it too)."""
    import fcntl

    f = open(run.files.lock, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RunBusy(f"{run.dir} is in use by another distill process (pid {holder}); wait for it or stop it") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
