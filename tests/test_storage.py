"""The run directory's storage: the mirror between a local copy and a remote folder (a plain
folder, `file://`, and S3 served by moto on loopback), and a whole run whose output_dir is a
bucket, restarted from the bucket alone."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from distill import storage
from distill.storage import Mirror


def write(path: Path, text: str, mtime: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if mtime is not None:
        os.utime(path, ns=(mtime, mtime))
    return path


def remote_files(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


@pytest.fixture(params=["path", "file-uri"])
def folder_remote(request, tmp_path):
    """(remote URI, the folder it names): a plain path or a file:// URI, both through fsspec."""
    folder = tmp_path / "remote" / "run"
    return (str(folder) if request.param == "path" else f"file://{folder}"), folder


def test_push_uploads_what_changed_and_never_working_files(folder_remote, tmp_path):
    uri, folder = folder_remote
    local = tmp_path / "local"
    write(local / "recipe.resolved.yaml", "name: x\n")
    write(local / "samples" / "part-1.parquet", "rows")
    write(local / ".lock", "123")  # the pipeline's lock
    write(local / "samples" / ".part-2.parquet.abc.tmp", "half")  # an atomic write in progress
    write(local / ".student-99" / "model.safetensors", "half")  # rank 0's save before its rename
    mirror = Mirror(uri, local)

    assert sorted(mirror.push()) == ["recipe.resolved.yaml", "samples/part-1.parquet"]
    assert remote_files(folder) == {"recipe.resolved.yaml": "name: x\n", "samples/part-1.parquet": "rows"}
    assert mirror.push() == []  # nothing changed

    write(local / "samples" / "part-2.parquet", "more rows")
    write(local / "recipe.resolved.yaml", "name: xy\n")
    assert sorted(mirror.push()) == ["recipe.resolved.yaml", "samples/part-2.parquet"]
    assert remote_files(folder)["recipe.resolved.yaml"] == "name: xy\n"

    (local / "samples" / "part-1.parquet").unlink()  # as the trainer rotates out an old checkpoint
    assert mirror.push() == []
    assert sorted(remote_files(folder)) == ["recipe.resolved.yaml", "samples/part-2.parquet"]


def test_files_the_run_removed_are_removed_from_the_remote_many_per_call(folder_remote, tmp_path, monkeypatch):
    """A merge of the samples parts removes as many files as sampling wrote: not one call each."""
    uri, folder = folder_remote
    local = tmp_path / "local"
    parts = [write(local / "samples" / f"part-{i}.parquet", f"rows {i}") for i in range(10)]
    mirror = Mirror(uri, local)
    mirror.push()
    monkeypatch.setattr(storage, "REMOVE_CHUNK", 4)
    calls = []
    real_rm = mirror.fs.rm
    monkeypatch.setattr(mirror.fs, "rm", lambda paths, *a, **k: calls.append(len(paths)) or real_rm(paths, *a, **k))
    (folder / "samples" / "part-0.parquet").unlink()  # already gone from the remote: the rest still go
    for part in parts:
        part.unlink()
    write(local / "samples" / "part-merged-a.parquet", "all rows")
    assert mirror.push() == ["samples/part-merged-a.parquet"]
    assert calls == [4, 4, 2]
    assert remote_files(folder) == {"samples/part-merged-a.parquet": "all rows"}
    assert mirror.push() == [] and calls == [4, 4, 2]  # forgotten once removed: nothing to remove again


def test_pull_fetches_what_the_copy_lacks_and_a_fresh_copy_pushes_nothing(folder_remote, tmp_path):
    uri, folder = folder_remote
    write(folder / "recipe.resolved.yaml", "name: x\n")
    write(folder / "dataset" / "train.parquet", "kept")
    write(folder / "samples" / "part-1.parquet", "rows")
    write(folder / "samples" / ".part-2.parquet.abc.tmp", "a half upload")  # never trusted
    copy = tmp_path / "elsewhere"

    assert Mirror(uri, copy).pull(only=["dataset", "recipe.resolved.yaml"]) == ["dataset/train.parquet",
                                                                                "recipe.resolved.yaml"]
    assert not (copy / "samples").exists()
    assert Mirror(uri, copy).pull() == ["samples/part-1.parquet"]
    assert remote_files(copy / "samples") == {"part-1.parquet": "rows"}  # no temp file came along
    assert Mirror(uri, copy).pull() == []
    assert Mirror(uri, copy).push() == []  # what was pulled is not sent back

    write(folder / "samples" / "part-1.parquet", "rows, longer now")  # another size: fetched again
    assert Mirror(uri, copy).pull() == ["samples/part-1.parquet"]
    assert (copy / "samples" / "part-1.parquet").read_text() == "rows, longer now"


def test_markers_reach_the_remote_after_what_they_mark(tmp_path):
    """A checkpoint is trusted once trainer_state.json exists: it is uploaded after the weights."""
    local = tmp_path / "local"
    ckpt = local / "train" / "checkpoints" / "checkpoint-4"
    write(ckpt / "trainer_state.json", "{}", mtime=2_000_000_000_000_000_000)
    write(ckpt / "model.safetensors", "weights", mtime=1_000_000_000_000_000_000)
    write(ckpt / "optimizer.pt", "state", mtime=1_500_000_000_000_000_000)
    assert Mirror(str(tmp_path / "remote"), local).push() == [
        "train/checkpoints/checkpoint-4/model.safetensors", "train/checkpoints/checkpoint-4/optimizer.pt",
        "train/checkpoints/checkpoint-4/trainer_state.json"]


def test_an_upload_cut_short_leaves_nothing_a_pull_would_trust(tmp_path, monkeypatch):
    folder = tmp_path / "remote"
    local = tmp_path / "local"
    write(local / "samples" / "part-1.parquet", "rows")
    mirror = Mirror(str(folder), local)

    def dies(*args, **kwargs):
        raise OSError("connection reset")

    monkeypatch.setattr(mirror.fs, "mv", dies)  # the upload reached its temporary name only
    with pytest.raises(OSError, match="connection reset"):
        mirror.push()
    assert remote_files(folder) == {}
    monkeypatch.undo()
    assert mirror.push() == ["samples/part-1.parquet"]  # not recorded as pushed: sent again


def test_the_background_syncer_pushes_while_a_stage_works(tmp_path):
    folder, local = tmp_path / "remote", tmp_path / "local"
    with storage.Syncer(Mirror(str(folder), local), every=0.05):
        write(local / "samples" / "part-1.parquet", "rows")
        deadline = time.monotonic() + 30
        while not (folder / "samples" / "part-1.parquet").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert remote_files(folder) == {"samples/part-1.parquet": "rows"}


def test_a_local_run_has_no_syncer_work(tmp_path):
    with storage.Syncer(None) as sync:
        sync.push()
    assert sync.thread is None


@pytest.mark.parametrize("uri, remote", [
    ("runs", False), ("/abs/runs", False), ("file:///abs/runs", False),
    ("s3://bucket/runs", True), ("gs://bucket/runs", True), ("memory://runs", True),
])
def test_which_output_dirs_are_remote(uri, remote):
    assert storage.is_remote(uri) is remote


def test_a_remote_run_has_a_local_copy_per_bucket(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    assert storage.cache_dir("s3://bucket/runs/demo/0123456789ab") == tmp_path / "s3/bucket/runs/demo/0123456789ab"
    assert storage.cache_dir("gs://bucket/runs/demo/0123456789ab") == tmp_path / "gs/bucket/runs/demo/0123456789ab"
    with pytest.raises(ValueError, match="'..' in a bucket URI"):
        storage.cache_dir("s3://bucket/../elsewhere")
    assert storage.local_path("file:///abs/runs") == Path("/abs/runs")


def test_the_sync_interval_is_checked(monkeypatch):
    monkeypatch.setenv("DISTILL_SYNC_SECONDS", "soon")
    with pytest.raises(ValueError, match="DISTILL_SYNC_SECONDS='soon': give the seconds"):
        storage.sync_seconds()
    monkeypatch.setenv("DISTILL_SYNC_SECONDS", "5")
    assert storage.sync_seconds() == 5.0


def test_an_unknown_protocol_says_what_to_use():
    with pytest.raises(RuntimeError, match="nosuch://b/runs: .*use a path, or a bucket URI"):
        Mirror("nosuch://b/runs", Path("/tmp/unused"))


# S3, as moto serves it on loopback.

def test_the_mirror_round_trips_through_s3(s3_bucket, tmp_path):
    import fsspec

    remote = f"{s3_bucket}/runs/demo/0123456789ab"
    local = tmp_path / "driver"
    write(local / "recipe.resolved.yaml", "name: demo\n")
    write(local / "train" / "checkpoints" / "checkpoint-2" / "model.safetensors", "weights")
    write(local / ".lock", "1")
    assert sorted(Mirror(remote, local).push()) == ["recipe.resolved.yaml",
                                                    "train/checkpoints/checkpoint-2/model.safetensors"]
    fs = fsspec.filesystem("s3")
    assert sorted(fs.find("distill-test/runs/demo/0123456789ab")) == [
        "distill-test/runs/demo/0123456789ab/recipe.resolved.yaml",
        "distill-test/runs/demo/0123456789ab/train/checkpoints/checkpoint-2/model.safetensors"]

    node = tmp_path / "worker-node"
    assert Mirror(remote, node).pull(only=["train/checkpoints"]) == ["train/checkpoints/checkpoint-2/model.safetensors"]
    write(node / "train" / "checkpoints" / "checkpoint-4" / "model.safetensors", "newer weights")
    shutil.rmtree(node / "train" / "checkpoints" / "checkpoint-2")  # rotated out on the worker
    assert Mirror(remote, node).push() == ["train/checkpoints/checkpoint-4/model.safetensors"]
    assert sorted(fs.find("distill-test/runs/demo/0123456789ab/train")) == [
        "distill-test/runs/demo/0123456789ab/train/checkpoints/checkpoint-4/model.safetensors"]
    assert Mirror(remote, local).pull() == ["train/checkpoints/checkpoint-4/model.safetensors"]  # the driver sees it


def bucket_recipe(tmp_path: Path, output_dir: str) -> Path:
    from support.fakes import write_recipe

    path = write_recipe(tmp_path)
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "output_dir": output_dir}))
    return path


def test_a_run_in_a_bucket_resumes_from_the_bucket_alone(s3_bucket, tmp_path, monkeypatch):
    """Everything a run writes reaches the bucket; with the local copy gone (another machine),
    the same recipe resamples nothing and rebuilds the same dataset."""
    import fsspec

    from distill.pipeline import run_pipeline
    from distill.recipe import load_recipe
    from support.fakes import FakeBackend

    monkeypatch.chdir(tmp_path)
    recipe_path = bucket_recipe(tmp_path, f"{s3_bucket}/runs")
    first = FakeBackend()
    run, summaries = run_pipeline(load_recipe(recipe_path), until="dataset", backend=first)
    assert run.remote == f"{s3_bucket}/runs/unit/{run.id}"
    assert run.dir == tmp_path / "cache" / "s3" / "distill-test" / "runs" / "unit" / run.id
    assert len(first.seen) == 12

    fs = fsspec.filesystem("s3")
    prefix = f"distill-test/runs/unit/{run.id}/"
    objects = {p[len(prefix):] for p in fs.find(prefix)}
    assert {"recipe.resolved.yaml", "licence.json", "prompts/train.parquet", "dataset/train.parquet",
            "dataset/manifest.json"} <= objects
    assert any(o.startswith("samples/part-") for o in objects)
    assert not [o for o in objects if any(part.startswith(".") for part in o.split("/"))]  # no lock, no temp
    local_files = {p.relative_to(run.dir).as_posix() for p in run.dir.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(run.dir).parts)}
    assert local_files == objects  # the bucket holds the whole run
    # The lineage store stays on this machine, beside the local copies; nothing SQLite in the bucket.
    assert (tmp_path / "cache" / "s3" / "distill-test" / "runs" / "lineage.sqlite").is_file()
    assert not [o for o in fs.find("distill-test") if o.endswith(".sqlite")]
    samples_before = run.files.read_samples().to_pylist()
    manifest_before = (run.dir / "dataset" / "manifest.json").read_text()

    shutil.rmtree(tmp_path / "cache")  # another machine: nothing local
    again = FakeBackend()
    rerun, resummaries = run_pipeline(load_recipe(recipe_path), until="dataset", backend=again)
    assert again.seen == []  # every sample came from the bucket
    assert rerun.dir == run.dir and resummaries["sample"].samples_new == 0
    assert rerun.files.read_samples().to_pylist() == samples_before
    assert resummaries["dataset"]["rows"] == summaries["dataset"]["rows"]
    assert (rerun.dir / "dataset" / "manifest.json").read_text() == manifest_before


def test_a_failing_run_in_a_bucket_keeps_what_it_sampled(s3_bucket, tmp_path, monkeypatch):
    """The push on failure: samples written before a crash are in the bucket, and a rerun from
    an empty local copy asks the teacher only for the rest."""
    from distill.pipeline import run_pipeline
    from distill.recipe import load_recipe
    from support.fakes import FakeBackend

    monkeypatch.chdir(tmp_path)
    recipe_path = bucket_recipe(tmp_path, f"{s3_bucket}/runs")
    recipe = load_recipe(recipe_path)
    recipe.sampling.attempts = 1  # no retry within the run: the crash ends it
    with pytest.raises(RuntimeError, match="engine died"):
        run_pipeline(recipe, until="sample", backend=FakeBackend(batch_size=2, crash_after=3))
    shutil.rmtree(tmp_path / "cache")
    rest = FakeBackend()
    run, summaries = run_pipeline(recipe, until="sample", backend=rest)
    assert len(rest.seen) == 6  # 3 batches of 2 were pushed when the run failed
    assert summaries["sample"].samples_total == 12 and summaries["sample"].samples_new == 6


def test_a_training_worker_pulls_what_it_reads_into_its_nodes_copy(s3_bucket, tmp_path, monkeypatch):
    """Under Ray Train a worker on another node has none of the driver's copy: node_copy pulls
    the recipe, the dataset and the checkpoints (not the samples) and moves resume_from there."""
    import pyarrow.fs

    from distill.pipeline import open_run
    from distill.recipe import load_recipe
    from distill.training.ray_train import _run_config, node_copy

    monkeypatch.chdir(tmp_path)
    run = open_run(load_recipe(bucket_recipe(tmp_path, f"{s3_bucket}/runs")))
    for rel in ("dataset/train.parquet", "samples/part-1.parquet", "train/checkpoints/checkpoint-2/trainer_state.json"):
        write(run.dir / rel, rel)
    Mirror(run.remote, run.dir).push()
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "node-cache"))

    node_run, resume_from = node_copy(run, run.dir / "train" / "checkpoints" / "checkpoint-2")
    node = tmp_path / "node-cache" / "s3" / "distill-test" / "runs" / "unit" / run.id
    assert node_run.dir == node and node_run.remote == run.remote and node_run.id == run.id
    assert resume_from == node / "train" / "checkpoints" / "checkpoint-2"
    assert (resume_from / "trainer_state.json").read_text() == "train/checkpoints/checkpoint-2/trainer_state.json"
    assert (node / "recipe.resolved.yaml").read_text() == (run.dir / "recipe.resolved.yaml").read_text()
    assert (node / "dataset" / "train.parquet").is_file() and not (node / "samples").exists()

    config = _run_config(run)  # Ray Train's own files go to the bucket too
    assert config.storage_path == f"distill-test/runs/unit/{run.id}/train"
    assert isinstance(config.storage_filesystem, pyarrow.fs.PyFileSystem)
    assert "s3" in config.storage_filesystem.handler.fs.protocol


def test_a_worker_without_the_run_in_the_bucket_says_so(s3_bucket, tmp_path):
    from types import SimpleNamespace

    from distill.training.ray_train import node_copy

    run = SimpleNamespace(remote=f"{s3_bucket}/runs/unit/never-pushed", dir=tmp_path / "driver")
    with pytest.raises(RuntimeError, match="has no recipe.resolved.yaml .*the driver has not pushed"):
        node_copy(run, None)


def test_models_the_run_made_are_served_from_the_bucket(tmp_path, monkeypatch):
    """Engines on other nodes have no copy of the driver's: a model inside a bucket run's
    directory (the student) is given to Ray Data LLM by its bucket URI; others by their path."""
    from types import SimpleNamespace

    from distill.pipeline import bucket_source

    local = tmp_path / "cache" / "run"
    student = SimpleNamespace(model=str(local / "student"))
    teacher = SimpleNamespace(model=str(tmp_path / "teacher"))
    run = SimpleNamespace(remote="s3://bucket/runs/demo/abc", dir=local)
    assert bucket_source(run, student) == "s3://bucket/runs/demo/abc/student"
    assert bucket_source(run, teacher) is None
    assert bucket_source(run, None) is None  # the run's teacher
    assert bucket_source(SimpleNamespace(remote="gs://b/r", dir=local), student) == "gs://b/r/student"
    # Protocols Ray Data LLM cannot download from, and local runs, keep the local path.
    assert bucket_source(SimpleNamespace(remote="memory://b/r", dir=local), student) is None
    assert bucket_source(SimpleNamespace(remote=None, dir=local), student) is None


@pytest.mark.slow
def test_an_engine_loads_a_student_from_the_bucket_without_a_local_copy_of_its_weights(s3_bucket, tiny_model, tmp_path,
                                                                                        monkeypatch):
    """The real path: Ray Data LLM downloads the weights from (moto's) S3 on the engine's node;
    the driver's copy holds no weights, so answers prove the bucket served them."""
    import fsspec
    import ray

    from distill.backends.vllm_ray import VLLMRayBackend
    from distill.teachers import Serving, Teacher

    fs = fsspec.filesystem("s3")
    fs.put(str(tiny_model) + "/", f"{s3_bucket}/runs/demo/abc/student/", recursive=True)
    local = tmp_path / "driver-copy"
    shutil.copytree(tiny_model, local, ignore=shutil.ignore_patterns("*.safetensors"))
    assert not list(local.glob("*.safetensors"))
    # boto3 (Ray's downloader) reads the endpoint from the environment; the engine's process
    # inherits it from the local Ray started here.
    monkeypatch.setenv("AWS_ENDPOINT_URL", fsspec.config.conf["s3"]["endpoint_url"])
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # where the node's download goes
    student = Teacher(id="tiny-student", model=str(local), revision="test", licence="apache-2.0", params_b=0.0032,
                      serving=Serving(dtype="bfloat16", max_model_len=512))
    backend = VLLMRayBackend(student, {"gpu_memory_utilization": 0.05}, seed=0, batch_size=4,
                             model_source=f"{s3_bucket}/runs/demo/abc/student")
    requests = [{"work_id": f"w{i}", "messages": [{"role": "user", "content": f"{i} + 1 = ?"}],
                 "sampling_params": {"max_tokens": 8, "temperature": 0.0}} for i in range(4)]
    ray.shutdown()  # a Ray another test started would not have AWS_ENDPOINT_URL
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = [r for batch in backend.generate(requests) for r in batch]
    finally:
        ray.shutdown()
    assert sorted(r["work_id"] for r in results) == [f"w{i}" for i in range(4)]
    assert not [r["error"] for r in results if r["error"]]
    assert all(r["completion_tokens"] > 0 for r in results)
