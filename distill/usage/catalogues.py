"""The two data files a usage plan reads: which licence a logged model's outputs fall under
(logged_models.yaml), and the candidate student bases with their chat templates' tool support
(bases.yaml). Both are data, so a team extends them without touching code."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml

HERE = Path(__file__).parent
LOGGED_MODELS_FILE = HERE / "logged_models.yaml"
BASES_FILE = HERE / "bases.yaml"
ToolSupport = Literal["own", "hermes", "none"]


def model_key(name: str) -> str:
    """How a logged model name is matched: lower case, without a `provider/` prefix."""
    return name.strip().lower().rsplit("/", 1)[-1]


@lru_cache(maxsize=1)
def _patterns() -> list[tuple[str, str]]:
    data = yaml.safe_load(LOGGED_MODELS_FILE.read_text())
    return [(e["pattern"].lower(), e["licence"]) for e in data["models"]]


def parse_overrides(values: list[str]) -> tuple[list[tuple[str, str]], str | None]:
    """--logged-licence values: `PATTERN=ID` pairs (tried before the shipped table) and at most one
    bare `ID` (for every model the table does not know). Raises ValueError."""
    pairs, fallback = [], None
    for v in values:
        if "=" in v:
            pattern, licence = (s.strip() for s in v.split("=", 1))
            if not pattern or not licence:
                raise ValueError(f"--logged-licence {v!r}: give MODEL=LICENCE (a model name or pattern, a licence id)")
            pairs.append((model_key(pattern), licence))
        elif fallback is not None:
            raise ValueError(f"--logged-licence: two licences for unknown models ({fallback!r}, {v!r}); give one, "
                             "or name the models: MODEL=LICENCE")
        else:
            fallback = v.strip()
    return pairs, fallback


def logged_licence(model: str, overrides: list[tuple[str, str]] = (), fallback: str | None = None) -> tuple[str | None, str]:
    """(licence id or None, where it came from) of a logged model name."""
    key = model_key(model)
    for pattern, licence in overrides:
        if fnmatch.fnmatchcase(key, pattern):
            return licence, f"--logged-licence {pattern}={licence}"
    for pattern, licence in _patterns():
        if fnmatch.fnmatchcase(key, pattern):
            return licence, f"{LOGGED_MODELS_FILE.name}: {pattern}"
    if fallback:
        return fallback, f"--logged-licence {fallback}"
    return None, f"licence unknown: add it to distill/usage/{LOGGED_MODELS_FILE.name} or pass --logged-licence"


@dataclass(frozen=True)
class Base:
    id: str
    params_b: float
    licence: str
    tools: ToolSupport
    hardware: str

    def fits(self, task_type: str) -> bool:
        return task_type != "tool call" or self.tools != "none"

    @property
    def template(self) -> str | None:
        """The chat template a recipe must set for tools to reach the model; None: its own."""
        return "hermes" if self.tools == "hermes" else None


@lru_cache(maxsize=4)
def load_bases(path: Path = BASES_FILE) -> tuple[Base, ...]:
    data = yaml.safe_load(Path(path).read_text())
    return tuple(Base(**entry) for entry in data["bases"])


def base_named(ref: str) -> Base | None:
    return next((b for b in load_bases() if b.id == ref), None)


def candidates(task_type: str) -> list[Base]:
    """The shipped bases that fit a task, in the file's order (smallest first)."""
    return [b for b in load_bases() if b.fits(task_type)]
