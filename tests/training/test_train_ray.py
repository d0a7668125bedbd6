"""The train stage on Ray Train workers: two CPU workers over gloo each train on their own half of
the data and rank 0 writes the student; a Ctrl-C'd training resumes from its checkpoint; the
`train.workers` key; where the workers are placed."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time

import pytest
import yaml

from distill.pipeline import open_run
from distill.recipe import RecipeError, Train, load_recipe
from distill.stages.train import train_student
from distill.training.sft import last_checkpoint
from support.student import sampled_run, student_recipe

STUDENT_FILES = {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "distill.json"}


def shards_partition_the_dataset(summary) -> bool:
    """The ranks' order-free digests add up to the dataset's exactly when they split it between them."""
    total = sum(int(s["digest"], 16) for s in summary["data_shards"]) % 2**64
    return total == int(summary["dataset_digest"], 16)


@pytest.mark.slow
def test_two_workers_train_on_their_own_halves_and_rank_0_writes_the_student(tmp_path, tiny_model, monkeypatch,
                                                                             local_ray):
    run = sampled_run(tmp_path, tiny_model, monkeypatch, workers=2, batch_size=2, packing=False, save_steps=4)
    summary = train_student(run)

    assert (summary["workers"], summary["backend"]) == (2, "gloo")
    assert summary == json.loads((run.dir / "train" / "summary.json").read_text())
    # 24 rows, 2 per worker per step, 2 workers: 6 steps (one process alone would take 12).
    assert summary["rows"] == 24 and summary["steps"] == 6 and not summary["resumed"]
    shards = summary["data_shards"]
    assert [s["rank"] for s in shards] == [0, 1]
    assert [s["rows"] for s in shards] == [12, 12]  # each rank saw half the rows ...
    assert shards[0]["digest"] != shards[1]["digest"]  # ... a different half ...
    assert shards_partition_the_dataset(summary)  # ... and together every row exactly once
    assert sum(s["tokens"] for s in shards) == summary["trained_tokens"]
    assert math.isfinite(summary["train_loss"]) and summary["train_loss"] > 0
    assert [e["step"] for e in summary["log"]] == list(range(1, 7))
    assert all(math.isfinite(e["loss"]) for e in summary["log"])

    student = run.dir / "student"
    assert {p.name for p in student.iterdir()} == STUDENT_FILES  # one rename by rank 0: complete
    assert not list(run.dir.glob(".student-*"))
    assert len(summary["weights_sha256"]) == 64
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(student)
    assert all(math.isfinite(p.abs().sum().item()) for p in model.parameters())
    checkpoints = sorted(p.name for p in (run.dir / "train" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4", "checkpoint-6"]  # on the run directory's storage
    assert sorted(p.name for p in (run.dir / "train" / "checkpoints" / "checkpoint-6").glob("rng_state_*")) == [
        "rng_state_0.pth", "rng_state_1.pth"]  # each rank saved its own random state


@pytest.mark.slow
def test_a_ray_training_stopped_with_ctrl_c_resumes_from_its_last_checkpoint(tmp_path, tiny_model, monkeypatch,
                                                                            local_ray):
    # Four epochs of 24 rows, 1 per worker x 2 workers: 48 steps, so that Ctrl-C at step 4 lands
    # before the end however fast the steps are.
    steps = 4 * 24 // 2
    run = sampled_run(tmp_path, tiny_model, monkeypatch, workers=2, batch_size=1, packing=False, save_steps=2,
                      epochs=4)
    checkpoints = run.dir / "train" / "checkpoints"
    handler = signal.getsignal(signal.SIGINT)
    stopper = CtrlCAfter(checkpoints / "checkpoint-4" / "trainer_state.json")
    with pytest.raises(KeyboardInterrupt):
        train_student(run)
    stopper.join()
    assert stopper.sent
    assert not (run.dir / "student").exists() and not (run.dir / "train" / "summary.json").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # Ray's abort handler did not outlive the training
    stopped_at = last_checkpoint(checkpoints)
    assert stopped_at is not None and int(stopped_at.name.split("-")[1]) in range(4, steps)

    bar = Bar()
    summary = train_student(run, bar)
    assert summary["resumed"] and summary["resumed_from"] == stopped_at.name
    assert (summary["workers"], summary["backend"]) == (2, "gloo")
    assert summary["steps"] == steps  # counted from the start
    assert [e["step"] for e in summary["log"]] == list(range(1, steps + 1))  # the curve is whole
    assert math.isfinite(summary["train_loss"])
    assert bar.started_at == int(stopped_at.name.split("-")[1]) and bar.done == steps  # the driver's bar followed
    left = steps - bar.started_at
    assert [s["rows"] for s in summary["data_shards"]] == [left, left]  # only the rest was trained
    assert {p.name for p in (run.dir / "student").iterdir()} == STUDENT_FILES


class CtrlCAfter(threading.Thread):
    """Presses Ctrl-C (SIGINT to this process) once `path` exists: a user stopping the training."""

    def __init__(self, path, timeout=900):
        super().__init__(daemon=True)
        self.path, self.timeout, self.sent = path, timeout, False
        self.start()

    def run(self):
        deadline = time.time() + self.timeout
        while time.time() < deadline:
            if self.path.exists():
                os.kill(os.getpid(), signal.SIGINT)
                self.sent = True
                return
            time.sleep(0.1)


class Bar:
    def __init__(self):
        self.started_at, self.done = None, 0

    def start(self, total, completed=0):
        self.started_at, self.done = completed, completed

    def advance(self, n):
        self.done += n


def test_the_driver_follows_rank_0_on_its_bar_and_its_wandb_run(monkeypatch):
    """Rank 0's steps and logs reach the driver through the relay actor; faked here, as is wandb."""
    from types import SimpleNamespace

    import ray
    import wandb

    from distill.training.ray_train import _Follower, _Relay

    relay = _Relay()
    monkeypatch.setattr(ray, "get", lambda value: value)
    logged = []
    monkeypatch.setattr(wandb, "run", SimpleNamespace(log=logged.append))
    bar = Bar()
    follower = _Follower(SimpleNamespace(take=SimpleNamespace(remote=relay.take)), bar, wandb=True)
    relay.start(12, 4)  # resumed at step 4
    relay.advance(1)
    relay.log({"step": 5, "epoch": 0.4, "loss": 2.5, "learning_rate": 1e-4})
    relay.advance(2)
    follower.stop()  # reads what is left
    follower.raise_error()
    assert (bar.started_at, bar.done) == (4, 7)
    assert logged == [{"train/epoch": 0.4, "train/loss": 2.5, "train/learning_rate": 1e-4, "train/global_step": 5}]


def test_one_worker_trains_in_process_and_records_its_whole_shard(tmp_path, tiny_model, monkeypatch):
    import ray

    run = sampled_run(tmp_path, tiny_model, monkeypatch, batch_size=4, packing=False, save_steps=100)
    summary = train_student(run)
    assert not ray.is_initialized()  # no Ray for one worker
    assert (summary["workers"], summary["backend"]) == (1, None)
    assert summary["data_shards"][0]["rows"] == 24 and shards_partition_the_dataset(summary)


def test_workers_defaults_to_one_and_is_checked(tmp_path, tiny_model):
    assert Train().workers == 1
    path = student_recipe(tmp_path, tiny_model, workers=2)
    assert load_recipe(path).train.workers == 2
    data = yaml.safe_load(path.read_text())
    for bad, message in [
        ({"workers": 0}, "train.workers: 0: input should be greater than or equal to 1"),
        ({"workers": "two"}, "train.workers: 'two': input should be a valid integer"),
        ({"workers": 1.5}, "train.workers: 1.5: input should be a valid integer"),
        ({"worker": 2}, "train.worker: unknown key (did you mean 'workers'?)"),
    ]:
        train = {k: v for k, v in data["train"].items() if k != "workers"}
        path.write_text(yaml.safe_dump({**data, "train": {**train, **bad}}))
        with pytest.raises(RecipeError) as e:
            load_recipe(path)
        assert message in str(e.value), str(e.value)


def test_workers_change_the_run(tmp_path, tiny_model, monkeypatch):
    """batch_size is per worker, so the worker count changes the global batch: a new run, never a
    resume of checkpoints made with another world size."""
    monkeypatch.chdir(tmp_path)
    one = open_run(load_recipe(student_recipe(tmp_path, tiny_model, workers=1)))
    two = open_run(load_recipe(student_recipe(tmp_path, tiny_model, workers=2)))
    assert one.dir != two.dir


def test_without_ray_running_the_stage_starts_it_as_the_pipeline_does(tmp_path, tiny_model, monkeypatch):
    """The driver's start_ray: a local Ray without dashboard, or the recipe's cluster.address."""
    import ray

    import distill.ray_runtime
    from distill.training.ray_train import fit_on_ray

    class Started(Exception):
        pass

    def start_ray(address=None, verbose=False):
        raise Started(f"address {address}")

    monkeypatch.setattr(distill.ray_runtime, "start_ray", start_ray)
    monkeypatch.chdir(tmp_path)
    run = open_run(load_recipe(student_recipe(tmp_path, tiny_model, workers=2)))
    assert not ray.is_initialized()
    with pytest.raises(Started, match="address None"):
        fit_on_ray(run, None, None)


def test_last_checkpoint_passes_over_one_a_kill_cut_short(tmp_path):
    for step, complete in [(2, True), (10, True), (12, False)]:
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert last_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # 10 > 2 as numbers, 12 is partial
    assert last_checkpoint(tmp_path / "none-yet") is None


@pytest.mark.parametrize("resources, nodes, expected", [
    ({"CPU": 8.0}, [8.0], ({"CPU": 4}, False, "gloo")),
    ({"CPU": 3.0}, [3.0], ({"CPU": 1}, False, "gloo")),
    ({"CPU": 0.0}, [2.0], ({"CPU": 1}, False, "gloo")),  # busy: the workers wait for a slot, never ask for 0
    ({"CPU": 4.0}, [1.0, 1.0, 1.0, 1.0], ({"CPU": 1}, False, "gloo")),  # no node has room for 2
    ({"CPU": 4.0}, [2.0, 1.0, 1.0], ({"CPU": 1}, False, "gloo")),  # one node has room for 2: not both workers
    ({"CPU": 8.0}, [4.0, 2.0, 2.0], ({"CPU": 2}, False, "gloo")),  # 4 would fit one worker only
    ({"CPU": 64.0, "GPU": 8.0}, [64.0], ({"CPU": 1, "GPU": 1}, True, "nccl")),
])
def test_workers_get_a_gpu_each_or_a_share_of_the_cpus(monkeypatch, resources, nodes, expected):
    import ray

    from distill.training.ray_train import worker_placement

    monkeypatch.setattr(ray, "cluster_resources", lambda: resources)
    monkeypatch.setattr(ray, "available_resources", lambda: resources)
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": c}} for c in nodes]
                        + [{"Alive": False, "Resources": {"CPU": 96.0}}])  # a dead node offers nothing
    scaling, backend = worker_placement(2, accelerator_type="A100" if "GPU" in resources else None)
    assert (scaling.resources_per_worker, scaling.use_gpu, backend) == expected
    assert scaling.num_workers == 2
    if "GPU" in resources:
        assert scaling.accelerator_type == "A100"


@pytest.mark.gpu
@pytest.mark.slow
def test_deepspeed_zero3_on_two_gpu_workers(tmp_path, tiny_model, monkeypatch):
    import ray
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two GPUs")
    ray.init(num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        run = sampled_run(tmp_path, tiny_model, monkeypatch, workers=2, deepspeed_stage=3, batch_size=2,
                          packing=False)
        summary = train_student(run)
    finally:
        ray.shutdown()
    assert (summary["workers"], summary["backend"]) == (2, "nccl")
    assert shards_partition_the_dataset(summary)
    from transformers import AutoModelForCausalLM

    student = AutoModelForCausalLM.from_pretrained(run.dir / "student")  # gathered, not ZeRO shards
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert sum(p.numel() for p in student.parameters()) == sum(p.numel() for p in base.parameters())
    assert json.loads((run.dir / "student" / "distill.json").read_text())["params_b"] > 0


def test_a_worker_trains_in_its_nodes_copy_of_a_bucket_run_and_pushes_what_it_saves(tmp_path, tiny_model,
                                                                                    monkeypatch, s3_bucket):
    """_train_worker on a node that has none of the driver's copy: it pulls what training reads,
    pushes each checkpoint when the trainer saves it, and student/ when done. `fit` and Ray's
    worker context are faked: the real ones train for minutes (the slow tests above)."""
    from types import SimpleNamespace

    import fsspec
    import ray.train

    import distill.training.sft
    from distill.storage import Mirror
    from distill.training.ray_train import _train_worker

    monkeypatch.chdir(tmp_path)
    path = student_recipe(tmp_path, tiny_model, workers=2)
    path.write_text(yaml.safe_dump({**yaml.safe_load(path.read_text()), "output_dir": f"{s3_bucket}/runs"}))
    run = open_run(load_recipe(path))
    (run.dir / "dataset").mkdir()
    (run.dir / "dataset" / "train.parquet").write_text("rows")
    Mirror(run.remote, run.dir).push()  # as fit_on_ray does before starting the workers
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path / "worker-node"))  # another machine
    fs = fsspec.filesystem("s3")
    remote = run.remote[len("s3://"):]
    seen = {}

    def fit(node_run, base, resume_from, progress, report_to, on_log=None, callbacks=()):
        seen["dir"], seen["dataset"] = node_run.dir, (node_run.dir / "dataset" / "train.parquet").read_text()
        checkpoint = node_run.dir / "train" / "checkpoints" / "checkpoint-4"
        checkpoint.mkdir(parents=True)
        (checkpoint / "model.safetensors").write_text("weights")
        (checkpoint / "trainer_state.json").write_text("{}")
        for callback in callbacks:
            callback.on_save(None, SimpleNamespace(global_step=4), None)
        seen["after_save"] = sorted(p[len(remote) + 1:] for p in fs.find(f"{remote}/train"))
        (node_run.dir / "student").mkdir()
        (node_run.dir / "student" / "config.json").write_text("{}")
        return {"steps": 4}

    monkeypatch.setattr(distill.training.sft, "fit", fit)
    monkeypatch.setattr(ray.train, "get_context", lambda: SimpleNamespace(get_world_rank=lambda: 0))
    facts = _train_worker({"run": run, "base": None, "resume_from": None, "relay": None})

    assert facts["steps"] == 4 and facts["host"]
    assert seen["dir"] == tmp_path / "worker-node" / "s3" / "distill-test" / "runs" / run.recipe.name / run.id
    assert seen["dataset"] == "rows"
    assert seen["after_save"] == ["train/checkpoints/checkpoint-4/model.safetensors",
                                  "train/checkpoints/checkpoint-4/trainer_state.json"]
    fs.invalidate_cache()
    assert fs.cat(f"{remote}/student/config.json") == b"{}"  # the driver pulls it from there
    assert not (run.dir / "student").exists()  # the driver's own copy is untouched until it pulls
