"""Lineage: where every record came from. Ids are derived from content, so the same
inputs give the same ids on any machine and in any order."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
from pathlib import Path

import distill


def digest(*parts: object, length: int = 16) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sample_seed(base_seed: int, prompt_id: str, sample_index: int) -> int:
    """Each sample's own seed: independent of batching, order and resumes."""
    return int(digest(base_seed, prompt_id, sample_index), 16) % (2**31 - 1)


def sample_id(prompt_id: str, teacher: str, revision: str, params: dict, sample_index: int, completion: str | None) -> str:
    """Content-derived: the same prompt, teacher, parameters, index and text give the same id."""
    return digest(prompt_id, teacher, revision, params, sample_index, completion, length=24)


@functools.cache
def code_version() -> str:
    """The package version, plus the git commit (and '+dirty') when run from a checkout;
    DISTILL_CODE_VERSION wins (a Ray job runs a shipped copy, not a checkout)."""
    if os.environ.get("DISTILL_CODE_VERSION"):
        return os.environ["DISTILL_CODE_VERSION"]
    root = Path(distill.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    if not commit:
        return distill.__version__
    return f"{distill.__version__}+g{commit}" + (".dirty" if dirty else "")


def dataset_name(resolved: dict, manifest: dict) -> str:
    """A run's dataset name: the recipe's name and the start of the content hash."""
    return f"{resolved['recipe']['name']}-sft-{manifest['content_sha256'][:12]}"
