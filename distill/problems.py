"""Problems with what a user wrote (a recipe, a teacher entry, a prompt file): each one located
by file and dotted key, with the bad value and what is allowed, so every problem is reported at
once and a user fixes a file in one pass. Also the YAML dialect recipes are read in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from distill.registry import closest


@dataclass(frozen=True)
class Problem:
    key: str
    message: str

    def render(self, file: str) -> str:
        return f"{file}: {self.key}: {self.message}"


class RecipeError(Exception):
    def __init__(self, file: str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.render(file) for p in problems))


class RecipeLoader(yaml.SafeLoader):
    """YAML as people write recipes: only true/false are booleans. YAML 1.1 (PyYAML's default)
    also reads on/off/yes/no as booleans, so a filter's `on: completion` became {True: ...}."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error on one line (PyYAML's own message spans several, with a caret drawing)."""
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return where + (getattr(e, "problem", None) or str(e).splitlines()[0])


def dotted(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names valid at a location, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        annotation = field.annotation
        for arg in getattr(annotation, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                annotation = arg
        current = annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def problems_from(
    error: ValidationError, model: type[BaseModel], prefix: tuple = (), also_allowed: tuple[str, ...] = ()
) -> list[Problem]:
    """`also_allowed`: keys valid beside the model's own at its top level (a component's name, required, ...)."""
    problems = []
    for err in error.errors():
        loc = prefix + tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        kind = err["type"]
        if kind == "extra_forbidden":
            allowed = fields_at(model, err["loc"][:-1]) + (list(also_allowed) if len(err["loc"]) == 1 else [])
            hint = closest(str(loc[-1]), allowed)
            tail = f" (did you mean {hint!r}?)" if hint else (f"; allowed: {', '.join(allowed)}" if allowed else "")
            message = f"unknown key{tail}"
        elif kind == "missing":
            message = "required key is missing"
        else:
            # A validator's own ValueError text, without pydantic's "Value error, " prefix.
            msg = str(err["ctx"]["error"]) if kind == "value_error" and "error" in err.get("ctx", {}) else err["msg"]
            message = f"{show(err['input'])}: {msg[0].lower()}{msg[1:]}"
        problems.append(Problem(dotted(loc), message))
    return problems
