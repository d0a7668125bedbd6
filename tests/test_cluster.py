"""The factory on a Ray cluster of several nodes (cluster/local.sh: a head and three workers on
loopback), through `distill submit`: two engine replicas share one recipe's prompts and the
samples say which made each; an engine actor killed mid-run and a worker node lost mid-run each
end with every sample there once; two Ray Train workers train one student.

An engine actor is killed with SIGKILL to its process (found with `ray list actors`): Ray Data's
actors have no name, so `ray kill-actor`, which takes one, cannot reach them; a dead process is
also what an out-of-memory kill or a crashed worker leaves.
"""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from support.localcluster import distill_cli, engine_actors, job_status, local_cluster, node_names, wait_until
from support.models import write_tiny_teacher

pytestmark = pytest.mark.slow

REPLICA = re.compile(r"actor (\w+) \(pid (\d+)\) on node (\w+)")


@pytest.fixture(scope="module")
def cluster():
    # Engines ask for a unit of `worker` (one per worker node): two replicas on two workers, and
    # a third worker with room for the replacement of an engine whose node was lost (a cluster
    # without room would wait for one, as it waits for the autoscaler to add a node). Two
    # logical CPUs a worker: an engine's one, and one for the light Ray Data stages that Ray may
    # place there (with one, a quarter-CPU stage on a worker keeps an engine off it).
    with local_cluster(workers=3, worker_cpus=2) as c:
        yield c


def write_recipe(folder: Path, model_dir: Path, name: str, prompts: int, n: int, max_tokens: int, **sections) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_tiny_teacher(folder / "tiny.yaml", model_dir)
    recipe = {
        "name": name,
        # A small KV cache: two engines and the training share one machine's memory.
        "teacher": {"id": "tiny.yaml", "engine_args": {"gpu_memory_utilization": 0.05}},
        "prompts": {"train": [{"source": "arithmetic", "count": prompts, "seed": 3}]},
        "sampling": {"n": n, "temperature": 1.0, "max_tokens": max_tokens, "seed": 5, "batch_size": 8},
        # The tiny teacher's weights are random: nothing would pass a required verifier.
        "verifiers": [{"name": "final-number", "required": False}],
        # Work starts once both engines are up: one engine starts in about two minutes on this
        # machine, two at once in three to four, and a lone first one would answer everything.
        "cluster": {"replicas": 2, "cpus_per_replica": 1, "resources_per_replica": {"worker": 1},
                    "wait_for_replicas_s": 900},
        "tracking": {"wandb": "disabled"},
        **sections,
    }
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return folder / "recipe.yaml"


def submit(cluster, tmp_path: Path, *args) -> tuple[str, Path]:
    sent = distill_cli("submit", "recipe/recipe.yaml", "--output-dir", tmp_path / "runs", *args,
                       env=cluster["env"], cwd=tmp_path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    run_dir = Path(re.search(r"run directory \(on the cluster\): (\S+)", sent.stderr).group(1))
    return sent.stdout.strip(), run_dir


def finish(cluster, job_id: str) -> str:
    followed = distill_cli("logs", job_id, "--follow", env=cluster["env"], timeout=1800)
    assert followed.returncode == 0, followed.stderr
    assert job_status(job_id, cluster["env"]) == "SUCCEEDED", followed.stdout[-4000:]
    return followed.stdout


def answered_by(run_dir: Path) -> set[str]:
    """Replica names in the samples on disk so far (parts are written whole, under their final name last)."""
    return {r for p in (run_dir / "samples").glob("part-*.parquet")
            for r in pq.read_table(p, columns=["replica"]).column("replica").to_pylist()}


def both_engines_sampling(cluster, run_dir: Path) -> list[dict]:
    """The two engine actors, once both run and samples of each are on disk."""
    actors = wait_until("two engine replicas starting", lambda: len(engine_actors(cluster)) == 2 and engine_actors(cluster),
                        900, every=2)
    wait_until("samples from both replicas written", lambda: len(answered_by(run_dir)) == 2, 900, every=0.5)
    return actors


def samples_are_complete_and_unique(run_dir: Path, prompts: int, n: int) -> list[dict]:
    rows = [r for p in sorted((run_dir / "samples").glob("part-*.parquet"))
            for r in pq.read_table(p, columns=["prompt_id", "sample_index", "error", "replica"]).to_pylist()]
    keys = [(r["prompt_id"], r["sample_index"]) for r in rows]
    assert len(set(keys)) == len(keys), "a sample was written twice"
    assert len(keys) == prompts * n, f"{prompts * n - len(keys)} samples missing"
    assert {i for _, i in keys} == set(range(n))
    assert not [r["error"] for r in rows if r["error"]]
    return rows


def replicas_of(rows: list[dict]) -> dict[str, set[str]]:
    """actor id prefix -> the process ids that answered for it."""
    out: dict[str, set[str]] = {}
    for r in rows:
        m = REPLICA.fullmatch(r["replica"] or "")
        assert m, f"sample without a replica name: {r['replica']!r}"
        out.setdefault(m.group(1), set()).add(m.group(2))
    return out


def test_a_killed_engine_replica_is_replaced_and_no_sample_is_lost(cluster, tiny_model, tmp_path):
    # One replica: its replacement must answer what is left. (With two, the survivor may answer
    # everything while the replacement still loads: an engine takes minutes to start on 2 cores.)
    prompts, n = 96, 4
    write_recipe(tmp_path / "recipe", tiny_model, "replicas", prompts, n, max_tokens=128,
                 cluster={"replicas": 1, "cpus_per_replica": 1, "resources_per_replica": {"worker": 1}})
    job_id, run_dir = submit(cluster, tmp_path, "--until", "sample")

    # The engine is killed as soon as samples are on disk.
    [victim] = wait_until("the engine replica starting", lambda: engine_actors(cluster), 900, every=2)
    wait_until("the first samples written", lambda: list((run_dir / "samples").glob("part-*.parquet")), 900, every=0.5)
    os.kill(int(victim["pid"]), signal.SIGKILL)
    finish(cluster, job_id)

    rows = samples_are_complete_and_unique(run_dir, prompts, n)
    replicas = replicas_of(rows)
    assert victim["actor_id"][:8] in replicas
    assert len(replicas[victim["actor_id"][:8]]) == 2, replicas  # its replacement process answered too
    assert str(victim["pid"]) in replicas[victim["actor_id"][:8]]

    attempts = json.loads((run_dir / "samples" / "attempts.json").read_text())
    answered = {}
    for a in attempts:
        for name, k in a["replicas"].items():
            answered[name] = answered.get(name, 0) + k
    assert sum(answered.values()) == prompts * n
    assert len(answered) == sum(len(pids) for pids in replicas.values())  # one entry per engine process
    from distill.stages.report import build_report

    page = build_report(run_dir).read_text()
    assert "the prompt stream; 1 replica process died and Ray started a replacement" in page
    from distill.lineage_store import read_run_dir

    samples = next(a for a in read_run_dir(run_dir).artifacts.values() if a["kind"] == "samples")
    assert {REPLICA.fullmatch(k).group(1) for k in samples["attrs"]["replicas"]} == set(replicas)


def test_two_ray_train_workers_train_one_student(cluster, tiny_model, tmp_path):
    write_recipe(tmp_path / "recipe", tiny_model, "two-workers", prompts=24, n=2, max_tokens=32,
                 student={"name": "tiny-student", "base": "tiny.yaml"},
                 train={"epochs": 1, "batch_size": 2, "max_length": 128, "save_steps": 4, "packing": False,
                        "workers": 2},
                 cluster={"replicas": 1, "cpus_per_replica": 1})
    job_id, run_dir = submit(cluster, tmp_path, "--until", "train")
    finish(cluster, job_id)

    summary = json.loads((run_dir / "train" / "summary.json").read_text())
    assert (summary["workers"], summary["backend"]) == (2, "gloo")
    shards = summary["data_shards"]
    assert [s["rank"] for s in shards] == [0, 1] and sum(s["rows"] for s in shards) == summary["rows"] == 48
    nodes = node_names(cluster)
    placed = [nodes[next(k for k in nodes if k.startswith(s["node"]))] for s in shards]
    assert len(set(placed)) == 2, placed  # one worker per node: the cluster, not one process, trained
    assert (run_dir / "student" / "config.json").is_file()
    assert sorted(p.name for p in (run_dir / "train" / "checkpoints").glob("checkpoint-*"))


def test_a_worker_node_lost_mid_run_costs_no_sample(cluster, tiny_model, tmp_path):
    """Two replicas share the prompts; the node of one is lost once both have answered. Runs
    last: the cluster has one worker fewer afterwards."""
    prompts, n = 96, 4
    write_recipe(tmp_path / "recipe", tiny_model, "node-loss", prompts, n, max_tokens=128)
    job_id, run_dir = submit(cluster, tmp_path, "--until", "sample")
    actors = both_engines_sampling(cluster, run_dir)
    nodes = node_names(cluster)
    on_workers = [a for a in actors if nodes.get(a["node_id"], "").startswith("w")]
    assert len(on_workers) == 2, f"engines on {[nodes.get(a['node_id']) for a in actors]}"  # resources_per_replica
    lost = nodes[on_workers[0]["node_id"]]
    stopped = cluster["local_sh"]("stop-node", lost)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    finish(cluster, job_id)

    rows = samples_are_complete_and_unique(run_dir, prompts, n)
    assert len(replicas_of(rows)) == 2  # two replicas shared the prompts
    on_lost = [r for r in rows if REPLICA.fullmatch(r["replica"]).group(3) == on_workers[0]["node_id"][:8]]
    assert on_lost  # the lost node had answered some before it went
    attempts = json.loads((run_dir / "samples" / "attempts.json").read_text())
    assert sum(a["answered"] for a in attempts) == prompts * n
