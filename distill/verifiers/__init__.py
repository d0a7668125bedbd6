"""Verifiers: pure functions over a batch of completions, registered by short name.

A verifier returns one Verdict per completion: a score in [0, 1], or None when it
cannot verify (no reference, nothing parsable). None is kept and counted, never
coerced to 0 or 1.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.registry import Registry

VERIFIERS = Registry("verifier")


@dataclass(frozen=True)
class Verdict:
    score: float | None
    reason: str = ""


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
    # Importing the modules runs their @VERIFIERS.register decorators.
    from distill.verifiers import code, final_number, judge, math, reasoning_format, tool_call  # noqa: F401


_load_builtins()
