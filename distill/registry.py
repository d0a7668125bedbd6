"""Registries by short name: the only list of valid names for verifiers, filters, prompt sources.

Help text, `distill ls` and validation errors all read the registry, so a name cannot be
valid in one place and unknown in another.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base for a component's recipe parameters: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class Entry:
    name: str
    fn: Any
    params: type[Params]
    summary: str
    example: str
    # The function takes a fourth argument: a context object (the questions, finish reasons, models).
    takes_context: bool = False
    # It runs a model (an LLM judge): the sample stage runs it after the teacher's batch, not during.
    uses_model: bool = False


def closest(name: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return match[0] if match else None


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, *, params: type[Params] = Params, example: str = "", takes_context: bool = False,
                 uses_model: bool = False) -> Callable:
        """Decorator: the function's docstring first line is its summary in `distill ls`."""

        def wrap(fn):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = (fn.__doc__ or "").strip().splitlines()
            self._entries[name] = Entry(name, fn, params, doc[0] if doc else "", example.strip(), takes_context,
                                        uses_model)
            return fn

        return wrap

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries[n] for n in self.names())

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            raise KeyError(self.unknown(name))
        return self._entries[name]

    def unknown(self, name: str) -> str:
        """The message for an unknown name: what is allowed and the closest match."""
        names = self.names()
        if not names:
            return f"unknown {self.kind} {name!r}: none are registered yet"
        hint = closest(str(name), names)
        tail = f" (did you mean {hint!r}?)" if hint else ""
        return f"unknown {self.kind} {name!r}{tail}; registered: {', '.join(names)}"
