"""`distill submit | status | logs | stop`: recipes as Ray jobs, and the cluster configs in cluster/.

The fast tests check the argument handling against a fake Jobs API client; the slow ones start
cluster/local.sh's multi-node cluster (a head and one worker on loopback), run a tiny recipe as
a job on it, and stop a second one."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

import distill
import distill.teachers
from distill import jobs
from distill.cli import app

from support import localcluster
from support.localcluster import LOCAL_SH, ROOT, distill_cli, job_status
from support.models import write_tiny_teacher

runner = CliRunner()


def write_recipe(folder: Path, name: str = "jobs-unit", **sections) -> Path:
    """A small valid recipe with a data file beside it, in a folder of its own."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    (folder / "data" / "questions.jsonl").write_text(
        "".join(json.dumps({"question": f"What is {i} + {i}?", "answer": str(2 * i)}) + "\n" for i in range(4)))
    recipe = {
        "name": name,
        "teacher": "smollm2-135m-instruct",
        "prompts": {"train": [{"source": "jsonl", "path": "data/questions.jsonl", "answer_field": "answer",
                               "licence": "cc0-1.0"}]},
        "tracking": {"wandb": "disabled"},
        **sections,
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


class FakeClient:
    """The Jobs API client's surface that distill uses; remembers what it was sent."""

    def __init__(self, address: str):
        self.address = address
        self.submitted: list[dict] = []

    def submit_job(self, **kwargs):
        work = Path(kwargs["runtime_env"]["working_dir"])  # removed once submit returns: look now
        kwargs["files"] = sorted(str(p.relative_to(work)) for p in work.rglob("*") if p.is_file())
        kwargs["sent_recipe"] = yaml.safe_load((work / "recipe.yaml").read_text())
        self.submitted.append(kwargs)
        return kwargs["submission_id"]

    def get_job_info(self, job_id):
        raise RuntimeError(f"Request failed with status code 404: Job {job_id} does not exist.")

    def list_jobs(self):
        return [SimpleNamespace(submission_id="distill-earlier-0a1b2c3d", start_time=1)]


@pytest.fixture
def fake(monkeypatch):
    """Every Jobs API client distill makes is this fake; `fake.made` counts them."""
    client = FakeClient("unset")
    client.made = 0

    def make(address):
        client.made += 1
        client.address = address
        return client

    monkeypatch.setattr(jobs, "make_client", make)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return client


@pytest.mark.parametrize("command", [["submit", "RECIPE"], ["status", "job-1"], ["logs", "job-1"], ["stop", "job-1"]])
def test_no_address_exits_2_saying_what_to_set(command, fake, tmp_path):
    args = [str(write_recipe(tmp_path)) if a == "RECIPE" else a for a in command]
    out = runner.invoke(app, args)
    assert out.exit_code == 2, out.output
    assert "RAY_ADDRESS" in out.output and "--address" in out.output
    assert fake.made == 0 and not fake.submitted


def test_an_invalid_recipe_is_not_submitted(fake, tmp_path):
    path = write_recipe(tmp_path, sampling={"temprature": 0.5})
    out = runner.invoke(app, ["submit", str(path), "--address", "http://127.0.0.1:8265"])
    assert out.exit_code == 2
    assert "sampling.temprature: unknown key (did you mean 'temperature'?)" in out.output
    assert fake.made == 0 and not fake.submitted


def test_a_recipe_the_licence_refuses_is_not_submitted(fake, tmp_path):
    path = write_recipe(tmp_path, teacher="llama-3.1-405b-instruct",
                        student={"name": "arith-student", "base": "smollm2-135m-instruct"})
    out = runner.invoke(app, ["submit", str(path), "--address", "http://127.0.0.1:8265"])
    assert out.exit_code == 2
    assert "REFUSED llama3.1:name-prefix" in out.output
    assert fake.made == 0 and not fake.submitted


def test_an_unknown_stage_is_refused(fake, tmp_path):
    out = runner.invoke(app, ["submit", str(write_recipe(tmp_path)), "--address", "x:1", "--until", "smaple"])
    assert out.exit_code == 2 and "unknown stage 'smaple'" in out.output
    assert not fake.submitted


def test_submit_ships_the_recipe_folder_and_this_package(fake, tmp_path, monkeypatch):
    folder = tmp_path / "recipe"
    path = write_recipe(folder)
    original = path.read_text()
    # Neither an earlier run directory nor an environment in the folder ships with the job.
    (folder / "runs" / "jobs-unit" / "old").mkdir(parents=True)
    (folder / "runs" / "jobs-unit" / "old" / "samples.parquet").write_bytes(b"x" * 1000)
    (folder / ".venv" / "bin").mkdir(parents=True)
    (folder / ".venv" / "bin" / "python").write_text("")
    monkeypatch.chdir(folder)  # the recipe's output_dir `runs` is taken from here, as `distill run` does
    out_dir = tmp_path / "shared" / "runs"

    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:8265")  # host:port means http://host:port
    out = runner.invoke(app, ["submit", "recipe.yaml", "--output-dir", str(out_dir), "--until", "sample"])
    assert out.exit_code == 0, out.output
    assert fake.address == "http://127.0.0.1:8265"
    [job] = fake.submitted
    assert out.stdout.strip().splitlines()[0] == job["submission_id"]  # the id alone on stdout's first line
    assert job["submission_id"].startswith("distill-jobs-unit-")
    assert job["entrypoint"] == "python -m distill.cli run recipe.yaml --until sample"
    assert job["files"] == ["data/questions.jsonl", "recipe.yaml"]
    assert job["runtime_env"]["py_modules"] == [str(Path(distill.__file__).parent)]
    from distill.lineage import code_version

    assert job["runtime_env"]["env_vars"] == {"DISTILL_CODE_VERSION": code_version()}
    # The copy that runs writes where --output-dir says; the user's recipe is untouched.
    assert job["sent_recipe"]["output_dir"] == str(out_dir)
    assert {k: v for k, v in job["sent_recipe"].items() if k != "output_dir"} == yaml.safe_load(original)
    assert path.read_text() == original
    run_dir = job["metadata"]["distill_run_dir"]
    assert re.fullmatch(re.escape(str(out_dir / "jobs-unit")) + r"/[0-9a-f]{12}", run_dir)
    assert f"run directory (on the cluster): {run_dir}" in out.output
    assert f"distill logs {job['submission_id']} --follow" in out.output


def test_without_output_dir_the_run_goes_where_distill_run_would_put_it(fake, tmp_path, monkeypatch):
    path = write_recipe(tmp_path / "recipe")
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["submit", str(path), "--address", "http://127.0.0.1:8265"])
    assert out.exit_code == 0, out.output
    [job] = fake.submitted
    assert job["sent_recipe"]["output_dir"] == str(tmp_path / "runs")
    assert job["entrypoint"] == "python -m distill.cli run recipe.yaml"


def test_a_bucket_as_output_dir_goes_to_the_job_as_it_is(fake, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["submit", str(write_recipe(tmp_path / "recipe")), "--address", "x:1",
                              "--output-dir", "s3://b/runs/"])
    assert out.exit_code == 0, out.output
    [job] = fake.submitted
    assert job["sent_recipe"]["output_dir"] == "s3://b/runs"
    assert re.fullmatch(r"s3://b/runs/jobs-unit/[0-9a-f]{12}", job["metadata"]["distill_run_dir"])
    assert job["files"] == ["data/questions.jsonl", "recipe.yaml"]


@pytest.mark.parametrize("output_dir, why", [
    ("memory://runs", "lives in one process's memory"),
    ("https://example.org/runs", "cannot write to them"),
    ("nosuch://b/runs", "fsspec knows no protocol 'nosuch'"),
])
def test_an_output_dir_no_run_can_live_in_is_refused_with_what_to_do(fake, tmp_path, output_dir, why):
    out = runner.invoke(app, ["submit", str(write_recipe(tmp_path)), "--address", "x:1", "--output-dir", output_dir])
    assert out.exit_code == 2, out.output
    assert why in out.output and "s3://BUCKET/runs" in out.output
    assert not fake.submitted


def test_env_sends_the_named_variables_and_never_shows_their_values(fake, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-secret-1")
    monkeypatch.setenv("DISTILL_LINEAGE_URL", "postgresql://u:pw-secret-2@db/lineage")
    monkeypatch.setenv("HF_TOKEN", "hf-secret-3")
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["submit", str(write_recipe(tmp_path / "recipe")), "--address", "x:1",
                              "--env", "WANDB_API_KEY", "--env", "DISTILL_LINEAGE_URL"])
    assert out.exit_code == 0, out.output
    [job] = fake.submitted
    from distill.lineage import code_version

    assert job["runtime_env"]["env_vars"] == {"WANDB_API_KEY": "wandb-secret-1",
                                              "DISTILL_LINEAGE_URL": "postgresql://u:pw-secret-2@db/lineage",
                                              "DISTILL_CODE_VERSION": code_version()}
    # HF_TOKEN is set here but was not named: one line says how to send it, without its value.
    assert "HF_TOKEN is set here but not sent with the job; add --env HF_TOKEN" in out.output
    assert "WANDB_API_KEY is set here" not in out.output
    assert not any(secret in out.output for secret in ("wandb-secret-1", "pw-secret-2", "hf-secret-3"))


def test_env_refuses_an_unset_or_reserved_name_before_anything_is_sent(fake, tmp_path, monkeypatch):
    monkeypatch.delenv("DISTILL_TEST_UNSET", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    path = str(write_recipe(tmp_path))
    out = runner.invoke(app, ["submit", path, "--env", "DISTILL_TEST_UNSET"])
    assert out.exit_code == 2
    assert "--env DISTILL_TEST_UNSET: not set in your environment; export it first" in out.output
    out = runner.invoke(app, ["submit", path, "--env", "RAY_ADDRESS", "--env", "HF_TOKEN=abc"])
    assert out.exit_code == 2
    assert "--env RAY_ADDRESS: not sent, Ray sets it for the job's driver" in out.output
    assert "--env HF_TOKEN=...: give the name alone (--env HF_TOKEN)" in out.output and "abc" not in out.output
    assert not fake.submitted and fake.made == 0


def test_files_named_outside_the_recipe_folder_are_refused(fake, tmp_path):
    (tmp_path / "elsewhere.jsonl").write_text(json.dumps({"question": "1 + 1?"}) + "\n")
    path = write_recipe(tmp_path / "recipe", prompts={"train": [
        {"source": "jsonl", "path": "../elsewhere.jsonl", "licence": "cc0-1.0"}]})
    out = runner.invoke(app, ["submit", str(path), "--address", "x:1"])
    assert out.exit_code == 2, out.output
    assert "'../elsewhere.jsonl' outside its folder" in out.output
    assert not fake.submitted


def test_a_teacher_entry_from_distill_teachers_is_refused_with_what_to_do(fake, tmp_path, monkeypatch):
    own = tmp_path / "my-teachers"
    own.mkdir()
    entry = yaml.safe_load((Path(distill.teachers.SHIPPED) / "smollm2-135m-instruct.yaml").read_text())
    (own / "my-smol.yaml").write_text(yaml.safe_dump({**entry, "id": "my-smol"}))
    monkeypatch.setenv("DISTILL_TEACHERS", str(own))
    path = write_recipe(tmp_path / "recipe", teacher="my-smol")
    out = runner.invoke(app, ["submit", str(path), "--address", "x:1"])
    assert out.exit_code == 2, out.output
    assert "'my-smol'" in out.output and "copy each YAML into the recipe's folder" in out.output
    assert not fake.submitted


@pytest.mark.parametrize("command", ["status", "logs", "stop"])
def test_an_unknown_job_id_names_the_jobs_that_exist(command, fake):
    out = runner.invoke(app, [command, "nope", "--address", "http://127.0.0.1:8265"])
    assert out.exit_code == 2
    assert "no job 'nope' on the cluster at http://127.0.0.1:8265" in out.output
    assert "distill-earlier-0a1b2c3d" in out.output


def test_an_unreachable_cluster_names_the_address_and_how_to_start_one(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # keep the client from changing this process's settings
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = runner.invoke(app, ["status", "job-1", "--address", f"127.0.0.1:{port}"])
    assert out.exit_code == 1
    assert f"no Ray cluster answers at http://127.0.0.1:{port}" in out.output
    assert "cluster/local.sh start" in out.output


# The cluster configs: they cannot run here, but they parse and have the structure each tool reads.

def test_the_gpu_cluster_config_is_a_valid_ray_launcher_config():
    import jsonschema
    import ray
    import ray.autoscaler

    config = yaml.safe_load((ROOT / "cluster" / "gpu-cluster.yaml").read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    nodes = config["available_node_types"]
    assert config["head_node_type"] in nodes
    assert nodes[config["head_node_type"]]["resources"] == {"CPU": 0}  # drivers only on the head
    gpu = [n for name, n in nodes.items() if name != config["head_node_type"]]
    assert {n["node_config"]["InstanceType"] for n in gpu} >= {"p5.48xlarge"}
    assert all(n["max_workers"] <= config["max_workers"] for n in gpu)
    assert ray.__version__ in config["docker"]["image"]
    assert any("distill[gpu]" in c for c in config["setup_commands"])
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP" in c for c in config["worker_start_ray_commands"])


def test_the_rayjob_manifest_runs_a_recipe_on_a_gpu_cluster_and_shuts_it_down():
    import ray

    job = yaml.safe_load((ROOT / "cluster" / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "distill run " in spec["entrypoint"] and spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    [container] = head["template"]["spec"]["containers"]
    assert 8265 in {p["containerPort"] for p in container["ports"]}
    [group] = cluster["workerGroupSpecs"]
    [worker] = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert group["replicas"] == 2  # DeepSeek-R1 at TP 8 x PP 2 spans two 8-GPU nodes
    # Every pod mounts the shared volume that holds the run directory.
    for pod in (head["template"]["spec"], group["template"]["spec"]):
        claims = {v["name"]: v for v in pod["volumes"] if "persistentVolumeClaim" in v}
        [mounts] = [c["volumeMounts"] for c in pod["containers"]]
        assert any(m["name"] in claims and m["mountPath"] == "/mnt/shared" for m in mounts)


def test_local_sh_says_how_to_use_it(tmp_path):
    env = {**os.environ, "DISTILL_LOCAL_RAY_DIR": str(tmp_path)}
    usage = subprocess.run(["bash", str(LOCAL_SH)], env=env, capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "start [WORKERS] | stop | stop-node NAME | status" in usage.stderr
    status = subprocess.run(["bash", str(LOCAL_SH), "status"], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "no local cluster recorded" in status.stdout
    head = subprocess.run(["bash", str(LOCAL_SH), "stop-node", "head"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert head.returncode == 2 and "takes a worker's name" in head.stderr  # `stop` ends the whole cluster
    missing = subprocess.run(["bash", str(LOCAL_SH), "stop-node", "w1"], env=env, capture_output=True, text=True,
                             timeout=60)
    assert missing.returncode == 1 and "no node w1 recorded" in missing.stderr


# On a real cluster: cluster/local.sh's head and one worker on loopback.

@pytest.fixture(scope="module")
def local_cluster():
    with localcluster.local_cluster(workers=1) as cluster:
        yield cluster


def tiny_recipe(folder: Path, model_dir: Path, name: str) -> Path:
    write_recipe(folder, name)  # for its data file
    write_tiny_teacher(folder / "tiny.yaml", model_dir)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump({
        "name": name,
        "teacher": {"id": "tiny.yaml", "engine_args": {"gpu_memory_utilization": 0.1}},
        # A data file beside the recipe and a generator: both must reach the cluster.
        "prompts": {"train": [{"source": "jsonl", "path": "data/questions.jsonl", "answer_field": "answer",
                               "licence": "cc0-1.0"},
                              {"source": "arithmetic", "count": 4, "seed": 3}]},
        "sampling": {"n": 2, "temperature": 1.0, "max_tokens": 16, "seed": 5},
        "verifiers": [{"name": "final-number", "required": False}],
        "tracking": {"wandb": "disabled"},
    }))
    return path


@pytest.mark.slow
def test_a_submitted_recipe_runs_on_the_local_cluster(local_cluster, tiny_model, tmp_path):
    env = local_cluster["env"]
    tiny_recipe(tmp_path / "recipe", tiny_model, "jobs-e2e")
    out_dir = tmp_path / "shared" / "runs"
    sent = distill_cli("submit", "recipe/recipe.yaml", "--output-dir", out_dir, "--until", "sample", env=env,
                       cwd=tmp_path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    job_id = sent.stdout.strip()
    run_dir = Path(re.search(r"run directory \(on the cluster\): (\S+)", sent.stderr).group(1))

    followed = distill_cli("logs", job_id, "--follow", env=env, timeout=1200)  # returns when the job ends
    assert followed.returncode == 0, followed.stderr
    assert job_status(job_id, env) == "SUCCEEDED", followed.stdout[-3000:]

    logs = distill_cli("logs", job_id, env=env)
    assert "python -m distill.cli run recipe.yaml --until sample" in logs.stdout
    # What `distill run` printed on the cluster (rich wraps a long path at 80 columns there).
    assert f"run directory: {run_dir}" in logs.stdout.replace("\n", "")
    status = distill_cli("status", job_id, env=env).stdout
    assert f"run directory: {run_dir}" in status and "recipe: " in status

    import pyarrow.parquet as pq

    assert run_dir.parent == out_dir / "jobs-e2e"
    for name in ("recipe.resolved.yaml", "licence.json", "prompts/train.parquet"):
        assert (run_dir / name).is_file(), name
    resolved = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())
    assert resolved["recipe"]["output_dir"] == str(out_dir)
    parts = sorted((run_dir / "samples").glob("part-*.parquet"))
    assert parts
    samples = [r for p in parts for r in pq.read_table(p).to_pylist()]
    assert len(samples) == (4 + 4) * 2  # the data file's 4 prompts and 4 generated, 2 samples each
    assert all(s["error"] is None and s["completion_tokens"] > 0 for s in samples)
    assert {s["prompt_source"] for s in samples} == {"jsonl:data/questions.jsonl", "arithmetic"}
    assert not (run_dir / "dataset").exists()  # --until sample reached the cluster


@pytest.mark.slow
def test_stop_ends_a_running_job_as_stopped(local_cluster, tiny_model, tmp_path):
    env = local_cluster["env"]
    tiny_recipe(tmp_path / "recipe", tiny_model, "jobs-stop")
    sent = distill_cli("submit", "recipe/recipe.yaml", "--output-dir", tmp_path / "runs", env=env, cwd=tmp_path)
    assert sent.returncode == 0, sent.stdout + sent.stderr
    job_id = sent.stdout.strip()
    deadline = time.monotonic() + 300
    while (state := job_status(job_id, env)) == "PENDING" and time.monotonic() < deadline:
        time.sleep(2)
    assert state == "RUNNING"
    stopped = distill_cli("stop", job_id, env=env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"job {job_id}: STOPPED" in stopped.stdout
    assert job_status(job_id, env) == "STOPPED"
    again = distill_cli("stop", job_id, env=env)  # stopping an ended job says so and changes nothing
    assert again.returncode == 0 and "STOPPED" in again.stdout


def test_a_recipe_has_one_run_id_wherever_it_writes(tmp_path):
    """output_dir is where a run goes, not what it makes: a job's run id is the laptop's."""
    import yaml as _yaml

    from distill.recipe import load_recipe

    recipe = {"name": "same", "teacher": "smollm2-135m-instruct",
              "prompts": {"train": [{"source": "arithmetic", "count": 2}]}, "tracking": {"wandb": "disabled"}}
    (tmp_path / "a.yaml").write_text(_yaml.safe_dump(recipe))
    (tmp_path / "b.yaml").write_text(_yaml.safe_dump({**recipe, "output_dir": "/shared/runs"}))
    assert load_recipe(tmp_path / "a.yaml").content_hash() == load_recipe(tmp_path / "b.yaml").content_hash()


def test_a_job_records_the_submitters_code_version(monkeypatch):
    from distill import lineage

    lineage.code_version.cache_clear()
    monkeypatch.setenv("DISTILL_CODE_VERSION", "0.1.0+gabc123")
    try:
        assert lineage.code_version() == "0.1.0+gabc123"
    finally:
        lineage.code_version.cache_clear()
