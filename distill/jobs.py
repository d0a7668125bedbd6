"""Recipes as Ray jobs: `distill submit | status | logs | stop`, through the Ray Jobs API.

A submitted job runs `python -m distill.cli run RECIPE` on the cluster, the command a laptop
runs. Its runtime environment carries what that command needs besides the cluster's own
packages (vLLM, TRL, ... come with the cluster's image, see cluster/):

- `working_dir`: a copy of the recipe's directory (the recipe and the data files it names,
  which are relative to it), in which the recipe's `output_dir` is set to where the run
  directory must go on the cluster;
- `py_modules`: this `distill` package as a directory, so the cluster runs the code that
  validated the recipe, whatever version its image has installed;
- `env_vars`: the submitter's code version, and the variables named with `--env` (secrets
  such as WANDB_API_KEY travel only when asked for: the cluster's Jobs API shows them to
  whoever can reach it).

The job's driver calls `ray.init()` with no address, and Ray points it at the cluster.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import shlex
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import yaml

import distill

ADDRESS_ENV = "RAY_ADDRESS"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
# The Ray Jobs API keeps a job's files in the cluster's GCS, which takes 512 MiB at most.
MAX_SHIPPED_MB = 500
# Never shipped with a recipe: environments, caches and earlier outputs.
NOT_SHIPPED = (".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ipynb_checkpoints",
               "wandb", "*.egg-info", "*.pyc")
HOW_TO_START = ("start one (cluster/local.sh start on this machine; `ray start --head` on a head node; "
                "docs/cluster.md) and pass the Jobs API address it prints: the dashboard's http://HOST:8265, "
                "not the GCS port (6379)")


class JobsError(Exception):
    """A problem the user can fix; the message says how. exit_code: 2 for bad input, 1 otherwise."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code


def resolve_address(address: str | None) -> str:
    """The Jobs API address: --address, else $RAY_ADDRESS; `host:port` means http://host:port."""
    address = address or os.environ.get(ADDRESS_ENV) or None
    if not address:
        raise JobsError(f"no cluster address: pass --address http://HEAD:8265 or set {ADDRESS_ENV} "
                        "(cluster/local.sh start prints the one of a local cluster)")
    address = address.rstrip("/")
    return address if "://" in address else f"http://{address}"


def _use_token_if_present() -> None:
    """Ray's drivers send the cluster's token when one exists ($RAY_AUTH_TOKEN, ~/.ray/auth_token)
    and RAY_AUTH_MODE is unset; its Jobs client does so only when told. Do as the drivers do."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    try:
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available
    except ImportError:  # a Ray without token authentication
        return
    quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def make_client(address: str):
    """A JobSubmissionClient for the cluster at `address`, or JobsError saying what to do."""
    from ray.job_submission import JobSubmissionClient

    _use_token_if_present()
    for chatter in ("ray.dashboard.modules.dashboard_sdk", "ray._private.runtime_env.packaging",
                    "ray.dashboard.modules.job.sdk"):  # uploads, websocket closed: said in our own words
        logging.getLogger(chatter).setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(address)
    except ConnectionError:
        raise JobsError(f"no Ray cluster answers at {address}: {HOW_TO_START}", exit_code=1) from None
    except Exception as e:  # Ray raises RuntimeError/AuthenticationError with the server's reply
        text = str(e)
        if "401" in text or "uthenticat" in text:
            raise JobsError(f"the Ray cluster at {address} wants its authentication token: set RAY_AUTH_TOKEN "
                            "(or put it in ~/.ray/auth_token); `ray get-auth-token` prints it on the head node",
                            exit_code=1) from None
        raise JobsError(f"cannot use the Ray Jobs API at {address}: {text}; {HOW_TO_START}", exit_code=1) from None


@dataclass
class Submitted:
    job_id: str
    address: str
    run_dir: str  # where the job writes, as the cluster sees it
    shipped_mb: float


# Protocols fsspec knows but a run directory cannot live in: the job would write where no one reads.
NOT_RUN_STORAGE = {
    "memory": "it lives in one process's memory and is gone when the job ends",
    "http": "fsspec reads http(s) URLs but cannot write to them",
    "https": "fsspec reads http(s) URLs but cannot write to them",
}
# Secrets a job often needs; `distill submit` says how to send them when they are set here but not sent.
SECRETS_HINTED = ("WANDB_API_KEY", "HF_TOKEN")
# Set for the job by distill submit or by Ray: forwarding the submitter's value would break the job.
NOT_FORWARDED = {
    "DISTILL_CODE_VERSION": "distill submit sets it to the version of the code it ships",
    "RAY_ADDRESS": "Ray sets it for the job's driver to reach the cluster; yours points at the Jobs API",
}


def output_dir_for(recipe, output_dir: str | None) -> str:
    """Where the run directory's parent goes: --output-dir, else the recipe's output_dir. A
    bucket URI stays as it is (every node reaches it); a relative path is taken from this
    directory as `distill run` does (right for a cluster on this machine or one that mounts the
    same path)."""
    from fsspec.registry import known_implementations

    from distill import storage

    chosen = output_dir if output_dir is not None else recipe.output_dir
    if not storage.is_remote(chosen):  # an absolute path is the cluster's: not resolved against this machine
        path = storage.local_path(chosen)
        return str(path if Path(chosen).is_absolute() else path.resolve())
    scheme = storage.protocol(chosen)
    if scheme in NOT_RUN_STORAGE:
        raise JobsError(f"output dir {chosen!r}: {NOT_RUN_STORAGE[scheme]}; use a bucket (s3://BUCKET/runs, "
                        "gs://BUCKET/runs) or a path every node mounts")
    if scheme not in known_implementations:
        raise JobsError(f"output dir {chosen!r}: fsspec knows no protocol {scheme!r}; use a bucket "
                        "(s3://BUCKET/runs, gs://BUCKET/runs) or a path every node mounts")
    return chosen.rstrip("/")


def forwarded_env(names: list[str], environ=None) -> dict[str, str]:
    """The submitter's values of the variables named with --env, for the job's runtime env.
    Only names appear in errors: values are never printed or written."""
    environ = os.environ if environ is None else environ
    problems = []
    for name in names:
        if name in NOT_FORWARDED:
            problems.append(f"--env {name}: not sent, {NOT_FORWARDED[name]}")
        elif "=" in name:  # a value typed on the command line: never echo it
            problems.append(f"--env {name.split('=')[0]}=...: give the name alone (--env {name.split('=')[0]}); "
                            "its value is read from your environment")
        elif not name.isidentifier():
            problems.append(f"--env {name!r}: not a variable name (letters, digits and '_')")
        elif name not in environ:
            problems.append(f"--env {name}: not set in your environment; export it first, or leave it out")
    if problems:
        raise JobsError("; ".join(problems))
    return {name: environ[name] for name in names}


def secret_hints(names: list[str], environ=None) -> list[str]:
    """One line per common secret that is set here but would not travel with the job."""
    environ = os.environ if environ is None else environ
    return [f"{name} is set here but not sent with the job; add --env {name} if the job needs it "
            "(docs/cluster.md, Secrets)" for name in SECRETS_HINTED if environ.get(name) and name not in names]


def entrypoint(recipe_file: str, until: str | None = None, verbose: bool = False) -> str:
    args = ["python", "-m", "distill.cli", "run", recipe_file]
    args += ["--until", until] if until else []
    args += ["--verbose"] if verbose else []
    return shlex.join(args)


def submit(recipe_path: str | Path, recipe, address: str, output_dir: str | None = None, until: str | None = None,
           verbose: bool = False, client_factory: Callable | None = None, env: list[str] = ()) -> Submitted:
    """Sends a validated recipe as a Ray job; returns its id and where its run directory will be.
    `env` names variables of this environment to send with the job (secrets, opt-in)."""
    from distill import storage

    recipe_path = Path(recipe_path).resolve()
    out = output_dir_for(recipe, output_dir)
    env_vars = forwarded_env(list(env))
    _check_paths_stay_inside(recipe, recipe_path.parent)
    _check_teachers_ship(recipe)
    client = (client_factory or make_client)(address)
    # Earlier run directories in the recipe's folder stay behind (where a laptop run put them, and
    # where this job will write, when either is inside it).
    leave_out = {storage.local_path(d) for d in (out, recipe.output_dir) if not storage.is_remote(d)}
    with staged(recipe_path, out, leave_out) as (work, shipped_mb):
        from distill.lineage import code_version
        from distill.recipe import RecipeError, load_recipe

        # The copy is what runs: its run id (the output_dir is part of the recipe) names the run directory.
        try:
            run_id = load_recipe(work / recipe_path.name).content_hash()[:12]
        except RecipeError as e:  # the copy must read as the original did; say so if it does not
            raise JobsError(f"the copy of {recipe_path} to send does not validate: {e}") from None
        run_dir = storage.join(out, recipe.name, run_id)
        try:
            job_id = client.submit_job(
                entrypoint=entrypoint(recipe_path.name, until, verbose),
                submission_id=f"distill-{recipe.name}-{secrets.token_hex(4)}",
                runtime_env={"working_dir": str(work), "py_modules": [str(Path(distill.__file__).parent)],
                             "excludes": list(NOT_SHIPPED),
                             # The shipped package is no git checkout: the job records the submitter's version.
                             "env_vars": {**env_vars, "DISTILL_CODE_VERSION": code_version()}},
                metadata={"distill_recipe": str(recipe_path), "distill_run_dir": run_dir},
            )
        except (RuntimeError, ValueError, OSError) as e:  # the server's reply, or the upload's error
            raise JobsError(f"the Ray cluster at {address} did not take the job: {e}", exit_code=1) from None
    return Submitted(job_id, address, run_dir, shipped_mb)


@contextmanager
def staged(recipe_path: Path, output_dir: str, leave_out: set[Path] = frozenset()) -> Iterator[tuple[Path, float]]:
    """A temporary copy of the recipe's directory (hard links where it can) whose recipe writes
    to `output_dir`, without the folders in `leave_out`; removed once the job is submitted (Ray
    has uploaded it by then)."""
    source = recipe_path.parent
    skip = shutil.ignore_patterns(*NOT_SHIPPED)
    leave_out = {p.resolve() for p in leave_out}

    def ignore(folder: str, names: list[str]) -> set[str]:
        return set(skip(folder, names)) | {n for n in names if (Path(folder) / n).resolve() in leave_out}

    def link_or_copy(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:  # another file system, or links not allowed
            shutil.copy2(src, dst)

    with tempfile.TemporaryDirectory(prefix="distill-submit-") as tmp:
        work = Path(tmp) / source.name
        shutil.copytree(source, work, ignore=ignore, copy_function=link_or_copy, symlinks=False)
        shipped_mb = sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 2**20
        if shipped_mb > MAX_SHIPPED_MB:
            raise JobsError(f"{source}: {shipped_mb:.0f} MiB would ship with the job, and the Ray Jobs API takes "
                            f"at most {MAX_SHIPPED_MB}: keep the recipe in a folder of its own with its small files, "
                            "and name large data by an absolute path on storage every node mounts")
        from distill.recipe import RecipeLoader

        data = yaml.load(recipe_path.read_text(), Loader=RecipeLoader)
        data["output_dir"] = output_dir
        target = work / recipe_path.name
        target.unlink()  # a hard link to the user's recipe: replace it, do not write through it
        target.write_text(f"# {recipe_path} as `distill submit` sent it: output_dir set for the cluster\n"
                          + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
        yield work, shipped_mb


def _check_paths_stay_inside(recipe, base: Path) -> None:
    """Relative paths in the recipe that leave its folder would not ship with it."""
    outside = sorted({v for v in _strings(recipe.resolved())
                      if not Path(v).is_absolute() and ".." in Path(v).parts and (base / v).exists()})
    if outside:
        raise JobsError(f"the recipe names {', '.join(map(repr, outside))} outside its folder {base}, and only that "
                        "folder ships with the job: move the files into it, or give absolute paths every node sees")


def _check_teachers_ship(recipe) -> None:
    """Entries found through $DISTILL_TEACHERS live on this machine only: the job would not find them."""
    from distill.teachers import catalog, origin

    entries = catalog()
    local = sorted({v for v in _strings(recipe.resolved()) if v in entries and origin(entries[v]) != "shipped"})
    if local:
        raise JobsError(f"the recipe names teacher entries from $DISTILL_TEACHERS ({', '.join(map(repr, local))}), "
                        "which do not ship with the job: copy each YAML into the recipe's folder and name it by "
                        "path (teacher: my-teacher.yaml)")


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def job_info(client, job_id: str, address: str):
    """The job's details, or JobsError naming the jobs that do exist."""
    try:
        return client.get_job_info(job_id)
    except RuntimeError as e:
        if "404" not in str(e) and "does not exist" not in str(e):
            raise
    try:
        recent = sorted(client.list_jobs(), key=lambda j: j.start_time or 0, reverse=True)[:5]
        known = ", ".join(j.submission_id for j in recent if j.submission_id)
    except Exception:
        known = ""
    raise JobsError(f"no job {job_id!r} on the cluster at {address}"
                    + (f"; recent jobs: {known}" if known else "; it has no jobs")
                    + " (distill submit prints a job's id)")


def describe(info) -> list[str]:
    """A job's details as `key: value` lines."""
    lines = [f"job: {info.submission_id}", f"status: {status_of(info)}"]
    if info.message:
        lines.append(f"message: {info.message}")
    meta = info.metadata or {}
    if meta.get("distill_recipe"):
        lines.append(f"recipe: {meta['distill_recipe']}")
    if meta.get("distill_run_dir"):
        lines.append(f"run directory: {meta['distill_run_dir']}")
    if info.start_time:
        end = info.end_time or time.time() * 1000
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.start_time / 1000))
        lines.append(f"started: {started} ({(end - info.start_time) / 1000:.0f} s "
                     + ("in all)" if info.end_time else "so far)"))
    lines.append(f"entrypoint: {info.entrypoint}")
    return lines


def status_of(info) -> str:
    return info.status.value if hasattr(info.status, "value") else str(info.status)


def follow_logs(client, job_id: str, write: Callable[[str], None]) -> None:
    """Streams the job's output until it ends."""

    async def tail():
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())


def stop(client, job_id: str, address: str, wait_seconds: float = 60) -> str:
    """Asks the cluster to stop the job and waits for it to end; returns its final status."""
    info = job_info(client, job_id, address)
    if status_of(info) in TERMINAL:
        return status_of(info)
    client.stop_job(job_id)
    deadline = time.monotonic() + wait_seconds
    while (state := status_of(client.get_job_info(job_id))) not in TERMINAL and time.monotonic() < deadline:
        time.sleep(1)
    return state
