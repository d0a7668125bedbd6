"""Filters: safety, PII, duplicates, decontamination, sanity. Registered by short name.

A filter is a function over the whole batch of candidate rows (the samples every required
verifier accepted), because some decisions need every row at once (duplicates). It returns
one FilterVerdict per row, in order:

    @FILTERS.register("name", params=MyParams, example="...")
    def my_filter(rows: list[dict], params: MyParams, ctx: FilterContext) -> list[FilterVerdict]:
        '''One line for `distill ls`.'''

Each row is a dict with at least: sample_id, prompt_id, prompt_text, completion,
finish_reason, completion_tokens, prompt_source. The recipe decides per filter whether a
flagged row is dropped or only marked (`mode: drop | mark`); the filter itself only judges.
A filter may rewrite a completion (PII redaction) by returning it in `completion`: the row is
then kept with the new text, and the rewrite is recorded. Plug-ins register under the
entry-point group `distill.filters` or are named in a recipe as `package.module:function`
(docs/extending.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from distill.registry import Registry

FILTERS = Registry("filter", group="distill.filters")


@dataclass(frozen=True)
class FilterVerdict:
    flagged: bool  # the filter objects to this row
    reason: str = ""  # why, for a person: "e-mail address", "near-duplicate of 3f2a.. (jaccard 0.91)"
    # What the summary counts flagged rows by: a PII kind, a benchmark name, a safety category.
    category: str = ""
    # A rewritten completion (e.g. with PII redacted); None: unchanged. A rewritten row is kept.
    completion: str | None = None


@dataclass
class FilterContext:
    """What a filter may need beyond its rows; built by the filter stage."""

    base_dir: Path = Path(".")  # recipe-relative paths resolve against this
    # The recipe's held-out eval prompts (dicts with prompt_id, question): decontamination's default set.
    eval_prompts: list[dict] = field(default_factory=list)
    # model id -> a backend with .generate(requests) (the teacher backends), for model-based filters.
    backend_for: Callable[[str], Any] | None = None
    progress: Any = None  # a progress bar with start(total=..)/advance(n), or None


def _load_builtins() -> None:
    # Importing every module of the package runs its @FILTERS.register decorators.
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_builtins()
