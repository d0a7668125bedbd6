"""cluster/local.sh from tests: a Ray cluster of a head and N workers on loopback, on free
ports and in its own temp folder, and what the tests ask of it (jobs, actors, nodes)."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SH = ROOT / "cluster" / "local.sh"


def free_base_port(offsets: tuple[int, ...]) -> int:
    """A port p such that p + each offset is free (Ray binds several ports near the ones given)."""
    for _ in range(500):
        base = random.randint(20000, 30000)  # below Linux's ephemeral range, above Ray's worker ports
        try:
            for offset in offsets:
                with socket.socket() as s:
                    s.bind(("", base + offset))
            return base
        except OSError:
            continue
    raise RuntimeError("no free ports")


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@contextmanager
def local_cluster(workers: int = 1, head_cpus: int = 1, worker_cpus: int = 1):
    """Starts head + `workers` workers; yields {address, env, state, local_sh(*args)}; stops them all."""
    # A short state path: Ray's socket paths under it must stay within the 107 bytes Unix allows.
    state = Path(tempfile.mkdtemp(prefix="dj-", dir="/tmp"))
    dashboard_offsets = (0, 100) + tuple(100 + i for i in range(1, workers + 1))
    env = {**os.environ, "DISTILL_LOCAL_RAY_DIR": str(state), "DISTILL_LOCAL_RAY_BIN": str(Path(sys.executable).parent),
           "DISTILL_LOCAL_RAY_HEAD_CPUS": str(head_cpus), "DISTILL_LOCAL_RAY_WORKER_CPUS": str(worker_cpus), "DISTILL_LOCAL_RAY_PORT": str(free_base_port((0, 1))),
           "DISTILL_LOCAL_RAY_DASHBOARD_PORT": str(free_base_port(dashboard_offsets))}
    env.pop("RAY_ADDRESS", None)

    def local_sh(*args, timeout=600):
        return subprocess.run(["bash", str(LOCAL_SH), *args], env=env, capture_output=True, text=True, timeout=timeout)

    groups: list[int] = []
    try:
        started = local_sh("start", str(workers))
        groups = [int(p.read_text()) for p in state.glob("*.pid")]
        assert started.returncode == 0, started.stdout + started.stderr
        assert len(groups) == workers + 1  # a head and the workers, each its own process group
        address = re.search(r"RAY_ADDRESS=(\S+)", started.stdout).group(1)
        status = local_sh("status", timeout=120)
        for name in ["node_head"] + [f"node_w{i}" for i in range(1, workers + 1)]:
            assert name in status.stdout, status.stdout + status.stderr
        yield {"address": address, "env": {**env, "RAY_ADDRESS": address}, "state": state, "local_sh": local_sh}
    finally:
        local_sh("stop", timeout=300)
        left = [g for g in groups if group_alive(g)]
        if not left:
            shutil.rmtree(state, ignore_errors=True)
        assert not left, f"process groups still alive after local.sh stop: {left}"


def distill_cli(*args, env, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "distill.cli", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def job_status(job_id: str, env) -> str:
    out = distill_cli("status", job_id, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return re.search(r"^status: (\w+)$", out.stdout, re.M).group(1)


def ray_list(kind: str, cluster: dict, *filters: str) -> list[dict]:
    """`ray list KIND --detail` through the cluster's dashboard, as dicts."""
    args = [str(Path(sys.executable).parent / "ray"), "list", kind, "--address", cluster["address"], "--detail",
            "--format", "json", "--limit", "10000"]
    for f in filters:
        args += ["--filter", f]
    # local.sh's cluster wants its token; the Ray CLI sends it only when told to.
    out = subprocess.run(args, env={**cluster["env"], "RAY_AUTH_MODE": "token"}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    return json.loads(out.stdout[out.stdout.index("["):])


def engine_actors(cluster: dict) -> list[dict]:
    """The live vLLM engine actors (Ray Data LLM's engine stage) of the cluster."""
    return [a for a in ray_list("actors", cluster, "state=ALIVE") if "vLLMEngineStageUDF" in (a.get("class_name") or "")]


def node_names(cluster: dict) -> dict[str, str]:
    """node id -> the local cluster's name for it (head, w1, w2, ...), from its custom resource."""
    names = {}
    for node in ray_list("nodes", cluster):
        resources = node.get("resources_total") or {}
        names[node["node_id"]] = next((k[len("node_"):] for k in resources if k.startswith("node_")), "?")
    return names


def wait_until(what: str, check, seconds: float, every: float = 1.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"{what} did not happen within {seconds:.0f} s")
