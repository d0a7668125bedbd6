"""The run directory's samples as a large run holds them: many batch-sized parts merged into a
few sorted ones, with their log-probabilities, safely when cut short; and read as streams."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from distill.run import MERGED_PREFIX, RunDir
from distill.training.logits import TeacherTokens


def sample(prompt: int, index: int) -> dict:
    return {"sample_id": f"s{prompt:03d}-{index}", "prompt_id": f"{prompt * 7919 % 1000:03x}", "sample_index": index,
            "completion": f"The answer is {prompt + index}.", "accepted": (prompt + index) % 3 != 0}


def order(row: dict) -> tuple:
    return row["prompt_id"], row["sample_index"]


def write_parts(files: RunDir, rows: list[dict], per_part: int, logprobs: bool = False) -> list[list[str]]:
    """The rows in a shuffled order, as the sample stage writes batches; returns each part's work ids."""
    rows = rows[:]
    random.Random(0).shuffle(rows)
    batches = []
    for lo in range(0, len(rows), per_part):
        batch = rows[lo : lo + per_part]
        work = [f"{r['prompt_id']}:{r['sample_index']}" for r in batch]
        if logprobs:
            files.write_logprob_part(work, [(r["sample_id"], teacher_tokens(r["sample_index"])) for r in batch])
        files.write_sample_part(work, batch)
        batches.append(work)
    return batches


def teacher_tokens(seed: int) -> TeacherTokens:
    rng = np.random.default_rng(seed)
    top = -np.sort(rng.exponential(size=(3, 2)), axis=1).astype(np.float32)
    ids = rng.integers(0, 1000, size=(3, 2))
    return TeacherTokens(ids[:, 0].copy(), top[:, 0].copy(), ids, top)


def plain(table) -> list[dict]:
    return sorted(table.select(["sample_id", "prompt_id", "sample_index", "completion", "accepted"]).to_pylist(),
                  key=order)


@pytest.fixture
def rows():
    return [sample(p, i) for p in range(40) for i in range(4)]  # 160 samples


def test_compaction_merges_small_parts_into_sorted_ones_and_keeps_every_sample(tmp_path, rows):
    files = RunDir(tmp_path)
    write_parts(files, rows, per_part=5)  # 32 parts
    before = plain(files.read_samples())
    assert files.compact_samples(rows_per_part=50) == 32
    parts = files.sample_parts()
    # Groups of 10 parts (50 rows), then the last 2: every part merged, none left on disk.
    assert sorted(pq.ParquetFile(p).metadata.num_rows for p in parts) == [10, 50, 50, 50]
    assert all(p.name.startswith(MERGED_PREFIX) for p in parts)
    assert sorted(p.name for p in files.samples_dir.iterdir()) == sorted(p.name for p in parts)
    for part in parts:  # each merged part is stored in (prompt id, sample index) order
        held = pq.read_table(part).to_pylist()
        assert held == sorted(held, key=order)
    assert plain(files.read_samples()) == before
    assert files.compact_samples(rows_per_part=50) == 0  # nothing left to merge


def test_a_merge_cut_short_never_shows_a_sample_twice_and_the_next_one_finishes_it(tmp_path, rows, monkeypatch):
    files = RunDir(tmp_path)
    write_parts(files, rows, per_part=8)  # 20 parts
    before = plain(files.read_samples())
    real_unlink = Path.unlink
    removed = []

    def killed_after_three(self, *a, **k):
        if self.parent == files.samples_dir:
            if len(removed) == 3:
                raise KeyboardInterrupt  # the process is killed while removing what it merged
            removed.append(self)
        return real_unlink(self, *a, **k)

    monkeypatch.setattr(Path, "unlink", killed_after_three)
    with pytest.raises(KeyboardInterrupt):
        files.compact_samples(rows_per_part=1_000)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    on_disk = list(files.samples_dir.glob("part-*.parquet"))
    assert len(on_disk) == 1 + 20 - 3  # the merged part, and 17 of the parts it holds
    assert plain(files.read_samples()) == before  # each sample once
    assert files.compact_samples(rows_per_part=1_000) == 0
    assert [p.name for p in files.samples_dir.glob("part-*.parquet")] == [files.sample_parts()[0].name]
    assert plain(files.read_samples()) == before


def test_log_probabilities_are_merged_with_their_samples(tmp_path, rows):
    files = RunDir(tmp_path)
    write_parts(files, rows[:40], per_part=6, logprobs=True)
    before, _ = files.read_logprobs()
    files.compact_samples(rows_per_part=1_000)
    after, read = files.read_logprobs()
    merged = files.sample_parts()
    assert len(merged) == 1 and read == [files.logprob_part(merged[0])]
    assert list(files.logprobs_dir.iterdir()) == [files.logprob_part(merged[0])]
    assert after == before and len(after) == 40


def test_a_merged_part_rewritten_by_the_judge_still_hides_the_parts_it_holds(tmp_path, rows):
    files = RunDir(tmp_path)
    write_parts(files, rows, per_part=10)
    source = files.sample_parts()[0]
    kept = source.read_bytes()
    files.compact_samples(rows_per_part=1_000)
    source.write_bytes(kept)  # a part the merge did not get to remove
    assert len(files.read_samples()) == len(rows)
    merged = next(files.samples_dir.glob(f"{MERGED_PREFIX}*"))
    files.rewrite_sample_part(merged, pq.read_table(merged).to_pylist())  # as add_pending_model_verdicts does
    assert files.sample_parts() == [merged] and len(files.read_samples()) == len(rows)


def test_samples_stream_in_order_across_merged_and_small_parts(tmp_path, rows):
    files = RunDir(tmp_path)
    write_parts(files, rows[:100], per_part=7)
    files.compact_samples(rows_per_part=30)
    write_parts(files, rows[100:], per_part=9)  # small parts written after a merge
    streamed = list(files.iter_samples_in_order(["sample_id", "completion"]))
    assert [r["sample_id"] for r in streamed] == [r["sample_id"] for r in sorted(rows, key=order)]
    assert set(streamed[0]) == {"sample_id", "completion", "prompt_id", "sample_index"}


def test_samples_stream_in_batches(tmp_path, rows):
    files = RunDir(tmp_path)
    assert list(files.iter_samples(["sample_id"])) == []
    write_parts(files, rows, per_part=16)
    batches = list(files.iter_samples(["sample_id", "accepted"], batch_rows=16))
    assert all(b.num_rows <= 16 for b in batches) and sum(b.num_rows for b in batches) == len(rows)
    assert sorted(x for b in batches for x in b["sample_id"].to_pylist()) == sorted(r["sample_id"] for r in rows)


def test_the_dataset_is_written_from_a_stream_and_its_head_read_alone(tmp_path):
    files = RunDir(tmp_path)
    rows = ({"prompt": [{"role": "user", "content": f"q{i}"}],
             "completion": [{"role": "assistant", "content": f"a{i}"}],
             "sample_id": f"s{i}", "prompt_id": f"p{i}", "flags": []} for i in range(20_000))
    files.write_dataset(rows)  # a generator: more rows than one written table holds
    table = files.read_dataset()
    assert table.num_rows == 20_000 and table["sample_id"][19_999].as_py() == "s19999"
    assert files.read_dataset(limit=3)["sample_id"].to_pylist() == ["s0", "s1", "s2"]
    files.write_dataset([])
    assert files.read_dataset(limit=3).num_rows == 0


def test_a_killed_samplers_half_written_parts_are_removed_and_the_parts_kept(tmp_path, rows):
    files = RunDir(tmp_path)
    write_parts(files, rows, per_part=40, logprobs=True)
    (files.samples_dir / ".part-abc.parquet.x1y2.tmp").write_bytes(b"half")
    (files.logprobs_dir / ".part-abc.parquet.q9.tmp").write_bytes(b"half")
    assert files.remove_unfinished_writes() == 2
    assert sorted(p.name for p in files.samples_dir.iterdir() if p.is_file()) == \
        sorted(p.name for p in files.sample_parts())
    assert len(files.sample_parts()) == 4 and len(files.logprob_parts()) == 4
    assert files.read_samples().num_rows == 160
