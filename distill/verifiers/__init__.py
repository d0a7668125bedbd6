"""Verifiers: pure functions over a batch of completions, registered by short name.

Every verifier has the same signature:

    @VERIFIERS.register("name", params=MyParams, example="...")
    def my_verifier(completions: list[str], references: list[str | None], params: MyParams,
                    ctx: VerifyContext) -> list[Verdict]:
        '''One line for `distill ls`.'''

A verifier returns one Verdict per completion: a score in [0, 1], or None when it
cannot verify (no reference, nothing parsable). None is kept and counted, never
coerced to 0 or 1. Plug-ins register under the entry-point group `distill.verifiers`
or are named in a recipe as `package.module:function` (docs/extending.md).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable

from distill.registry import Registry
from distill.schema import Verdict  # noqa: F401  (the verifiers' result type, re-exported)

VERIFIERS = Registry("verifier", group="distill.verifiers")


@dataclass
class VerifyContext:
    """What a verifier sees besides completions and references, aligned with them."""

    questions: list[str | None]
    finish_reasons: list[str | None]
    # The tool definitions (OpenAI format) each prompt was sent with; None for a prompt without.
    tools: list[list[dict] | None] | None = None
    # model id -> a backend (the teacher backends), for verifiers that run a model.
    backend_for: Callable[[str], Any] | None = None

    @classmethod
    def blank(cls, n: int) -> VerifyContext:
        """A context that knows nothing beyond the texts, for n completions (tests, re-scoring)."""
        return cls(questions=[None] * n, finish_reasons=[None] * n, tools=[None] * n)


def parse_reference(text: str):
    """A structured reference (tests, a tool-call spec) from a prompt row's text: JSON, or the
    Python literal a prompt file's object field became. Raises ValueError saying what is wrong."""
    import ast
    import json

    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"reference is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None


def _load_builtins() -> None:
    # Importing every module of the package runs its @VERIFIERS.register decorators.
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


_load_builtins()
