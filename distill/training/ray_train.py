"""Training under Ray Train: `train.workers` data-parallel workers, each running the method's
fit (`distill.training.methods.fit_for`), the same code that trains in-process.

Ray Train's TorchTrainer places the workers (one GPU each when the cluster has GPUs, else an
equal share of the free CPUs), sets up the torch process group (NCCL on GPUs, gloo on CPUs) and
the RANK / WORLD_SIZE / LOCAL_RANK environment that HF's Trainer reads. From there the Trainer
does what it does under torchrun: DDP or DeepSpeed, and a distributed sampler that deals each
rank its own rows. Two of Ray's HF helpers are left out on purpose: `prepare_trainer` only swaps
in data loaders for Ray Data iterables, and SFTTrainer needs a `datasets.Dataset` to tokenise and
pack; `RayTrainReportCallback` copies every checkpoint into Ray's storage, a second copy of what
`train/checkpoints/` already holds and what both paths resume from. So the workers report
nothing to Ray: rank 0's `fit` returns the facts the summary needs, and its steps and loss logs
reach the driver's progress bar (and wandb run) through a small actor.

When output_dir is a bucket, no node shares the driver's local copy of the run: each worker
pulls what training reads into its own node's copy, every rank pushes its checkpoint files
after each save and when done (rank 0 also `student/`), and the driver pulls `student/` and
`train/` back. Ray Train's own storage is then the bucket too.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

from distill import storage
from distill.run import RunDir
from distill.training.methods import fit_for

SHARED_STORAGE = ("with train.workers > 1 every node must reach the run directory: set output_dir to a bucket URI "
                  "(s3://BUCKET/runs, gs://BUCKET/runs; no shared mount needed), or to a path every node mounts at "
                  "the same place (NFS, or one machine)")


def fit_on_ray(run, base, resume_from: Path | None, progress=None, report_to: list[str] = ()) -> dict:
    """Trains with a TorchTrainer of `train.workers` workers; returns rank 0's `fit` facts."""
    import ray
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():  # the pipeline started it for sampling; a direct call may not have
        from distill.ray_runtime import start_ray

        start_ray(run.recipe.cluster.address)
    scaling, backend = worker_placement(run.recipe.train.workers, run.recipe.cluster.accelerator_type)
    relay = ray.remote(num_cpus=0)(_Relay).remote()
    trainer = TorchTrainer(
        _train_worker,
        # Workers run in Ray's own working directory: every path they get is absolute.
        train_loop_config={"run": run, "base": _absolute(base), "resume_from": resume_from, "relay": relay},
        scaling_config=scaling,
        torch_config=TorchConfig(backend=backend),
        run_config=_run_config(run),
    )
    if run.remote:  # the workers start from the bucket: it must hold the dataset
        storage.Mirror(run.remote, run.dir).push()
    follower = _Follower(relay, progress, wandb="wandb" in report_to)
    try:
        with _sigint_handler_restored():
            result = trainer.fit()
    except SystemExit as e:  # Ray's Ctrl-C handler exits when the aborted controller is already gone
        raise KeyboardInterrupt("training interrupted; a rerun resumes from train/checkpoints/") from e
    finally:
        follower.stop()
        ray.kill(relay)
    facts = result.return_value
    if facts is None:  # a Ctrl-C aborted the workers; fit() returns without an error
        raise KeyboardInterrupt("training interrupted; a rerun resumes from train/checkpoints/")
    if run.remote:
        storage.Mirror(run.remote, run.dir).pull(only=run.files.relative(run.files.student_dir, run.files.train_dir))
        if not (run.files.student_dir / "config.json").is_file():
            raise RuntimeError(f"rank 0 trained on {facts['host']}, but {run.remote}/student has no config.json: "
                               "its upload failed; the worker's log (distill run --verbose) says why")
    if not (run.files.student_dir / "config.json").is_file():
        raise RuntimeError(f"rank 0 wrote {run.files.student_dir} on {facts['host']}, but this machine does not see it: "
                           f"{SHARED_STORAGE}")
    follower.raise_error()
    return facts


def worker_placement(workers: int, accelerator_type: str | None = None):
    """The ScalingConfig and torch backend: one GPU per worker (NCCL) when the cluster has GPUs,
    whatever the driver's node has; else an equal share of the free CPUs per worker (gloo)."""
    import ray
    from ray.train import ScalingConfig

    if ray.cluster_resources().get("GPU", 0) > 0:
        return ScalingConfig(num_workers=workers, use_gpu=True, resources_per_worker={"CPU": 1, "GPU": 1},
                             accelerator_type=accelerator_type), "nccl"
    share = max(1, int(ray.available_resources().get("CPU", 0)) // workers)
    nodes = [int(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    return ScalingConfig(num_workers=workers, use_gpu=False,
                         resources_per_worker={"CPU": cpus_per_worker(share, workers, nodes)}), "gloo"


def cpus_per_worker(share: int, workers: int, nodes: list[int]) -> int:
    """At most `share` CPUs (an equal share of the free ones), and few enough that the nodes hold
    all the workers, each on one node: four 1-CPU nodes have 4 CPUs, and no room for two 2-CPU
    workers; nodes of 2, 1 and 1 CPUs hold two workers of 1."""
    for cpus in range(share, 1, -1):
        if sum(n // cpus for n in nodes) >= workers:
            return cpus
    return 1


def _run_config(run):
    """Ray Train's storage: the run's train/ folder (not ~/ray_results), in the bucket for a remote run."""
    from ray.train import RunConfig

    if not run.remote:
        return RunConfig(name="ray", storage_path=str(run.files.train_dir))
    import pyarrow.fs

    fs, path = storage.open_filesystem(storage.join(run.remote, "train"))
    return RunConfig(name="ray", storage_path=path,
                     storage_filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)))


def _train_worker(config: dict) -> dict:
    """One Ray Train worker: the in-process `fit`; rank 0 relays its progress and logs. For a
    remote run it trains in its node's copy and pushes what it wrote."""
    import ray.train

    run, relay, resume_from = config["run"], config["relay"], config["resume_from"]
    mirror = None
    if run.remote:
        run, resume_from = node_copy(run, resume_from)
        mirror = storage.Mirror(run.remote, run.dir)
    elif not run.files.resolved_recipe.is_file():
        raise RuntimeError(f"{run.dir} does not exist on {socket.gethostname()}: {SHARED_STORAGE}")
    rank0 = ray.train.get_context().get_world_rank() == 0
    fit = fit_for(run.recipe.train.method)
    facts = fit(run, config["base"], resume_from, _RemoteBar(relay) if rank0 else None, [],
                on_log=(lambda entry: relay.log.remote(entry)) if rank0 else None,
                callbacks=[_push_on_save(mirror)] if mirror else [])
    if mirror:
        mirror.push()  # the last checkpoint; on rank 0 also student/
    return {**facts, "host": socket.gethostname()}


def node_copy(run, resume_from: Path | None):
    """(run, resume_from) in this node's copy of a remote run, with what training reads pulled
    in: the driver's own copy is on another machine, or at another path."""
    local = storage.cache_dir(run.remote)
    files = RunDir(local)
    # What a worker reads from the run directory, copied into its node's copy.
    storage.Mirror(run.remote, local).pull(only=files.relative(files.resolved_recipe, files.dataset_dir,
                                                                files.checkpoints))
    if not files.resolved_recipe.is_file():
        raise RuntimeError(f"{run.remote} has no recipe.resolved.yaml on {socket.gethostname()}: the driver has not "
                           "pushed the run there; check that every node can read the bucket (credentials, endpoint)")
    if resume_from is not None:
        resume_from = local / Path(resume_from).relative_to(run.dir)
    return dataclasses.replace(run, dir=local), resume_from


def _push_on_save(mirror):
    """A TrainerCallback that pushes the node's copy after every checkpoint save, so a crash
    loses no saved checkpoint. A failed push is logged: the push after training reports it."""
    from transformers import TrainerCallback

    class PushOnSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            try:
                mirror.push()
            except Exception as e:  # noqa: BLE001 - a network hiccup must not end the training
                logging.getLogger(__name__).warning("checkpoint %s not copied to %s yet: %s",
                                                    state.global_step, mirror.remote, e)

    return PushOnSave()


def _absolute(base):
    path = Path(base.path)
    return dataclasses.replace(base, load_from=str(path.resolve())) if path.exists() else base  # else a hub id


class _Relay:
    """Rank 0's progress and loss logs, held for the driver to read (a Ray actor using no CPU)."""

    def __init__(self):
        self.total, self.first, self.done, self.logs = None, 0, 0, []

    def start(self, total: int, completed: int) -> None:
        self.total, self.first, self.done = total, completed, completed

    def advance(self, n: int) -> None:
        self.done += n

    def log(self, entry: dict) -> None:
        self.logs.append(entry)

    def take(self) -> tuple:
        logs, self.logs = self.logs, []
        return self.total, self.first, self.done, logs


class _RemoteBar:
    """A progress bar in a worker that forwards to the relay (calls from one caller arrive in order)."""

    def __init__(self, relay):
        self.relay = relay

    def start(self, total: int, completed: int = 0) -> None:
        self.relay.start.remote(total, completed)

    def advance(self, n: int) -> None:
        self.relay.advance.remote(n)


class _Follower:
    """Reads the relay every second in a thread: advances the driver's bar, logs the loss to the
    active wandb run (the workers' trainers report to nothing, or each would start its own run)."""

    def __init__(self, relay, progress, wandb: bool):
        self.relay, self.progress, self.wandb = relay, progress, wandb
        self.started, self.shown, self.error = None, 0, None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="distill-train-progress")
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.wait(1.0):
            self.poll()

    def poll(self) -> None:
        import ray

        try:
            total, first, done, logs = ray.get(self.relay.take.remote())
            if self.progress is not None and total is not None:
                if self.started != (total, first):
                    self.progress.start(total=total, completed=first)
                    self.started, self.shown = (total, first), first
                if done > self.shown:
                    self.progress.advance(done - self.shown)
                    self.shown = done
            if self.wandb and logs:
                _log_to_wandb(logs)
        except Exception as e:  # noqa: BLE001 - a broken bar must not kill a training; raised after it
            self.error = self.error or e

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.poll()  # the last steps

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _log_to_wandb(entries: list[dict]) -> None:
    """As HF's WandbCallback logs them: train/<key>, stepped by train/global_step."""
    import wandb

    if wandb.run is None:
        return
    for e in entries:
        values = {f"train/{k}": v for k, v in e.items()
                  if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        wandb.run.log({**values, "train/global_step": e["step"]})


@contextmanager
def _sigint_handler_restored():
    """TorchTrainer.fit installs a Ctrl-C handler (abort the run) and leaves it installed after
    the run; a later Ctrl-C in another stage would then exit with status 0. Put ours back."""
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    finally:
        if before is not None:
            signal.signal(signal.SIGINT, before)
