"""docs/recipe-reference.md, generated from the recipe schema: every key, its type, its
default and its description. `python -m distill.recipe.reference` prints the page; a test
fails when the committed page differs from what this writes."""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from distill.recipe.schema import Component, Recipe

HEADER = """# Recipe reference

Every key a recipe may hold, section by section: its type, its default and what it is for.
Unknown keys are errors (`distill validate` names the closest valid one). A component's own
keys (a prompt source's `path`, a verifier's `tolerance`, ...) are listed by `distill ls NAME`
and in [verifiers and filters](verifiers-and-filters.md).

This page is generated from the schema (`distill/recipe/schema.py`) by
`python -m distill.recipe.reference > docs/recipe-reference.md`.
"""


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models inside a field's type (list[X], X | None, ...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models(arg)]


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in typing.get_args(annotation))
    if origin is list:
        return f"list of {_type_name(typing.get_args(annotation)[0])}"
    if origin is dict:
        key, value = typing.get_args(annotation)
        return f"mapping {_type_name(key)} -> {_type_name(value)}"
    if annotation is type(None):
        return "none"
    if annotation is typing.Any:
        return "any"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    return getattr(annotation, "__name__", str(annotation))


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default if field.default is not PydanticUndefined else field.default_factory()
    if isinstance(value, BaseModel):
        return "(its section)"
    return "none" if value is None else f"`{json.dumps(value)}`"


def sections(model: type[BaseModel] = Recipe, key: str = "") -> list[tuple[str, type[BaseModel]]]:
    """(dotted key, model) for the recipe and every section below it, in schema order."""
    out = [(key, model)]
    for name, field in model.model_fields.items():
        listed = typing.get_origin(field.annotation) is list
        for sub in _models(field.annotation):
            out += sections(sub, (f"{key}.{name}" if key else name) + ("[]" if listed else ""))
    return out


def render() -> str:
    parts = [HEADER]
    keys: dict[type, list[str]] = {}
    for key, model in sections():  # prompts.train[] and prompts.eval[] share one model, and one table
        keys.setdefault(model, []).append(key)
    for model, where in keys.items():
        title = ", ".join(f"`{k}`" for k in where) if where != [""] else "Top level"
        doc = (model.__doc__ or "").strip().splitlines()[0]
        if issubclass(model, Component):
            doc += " Further keys: the component's own parameters."
        rows = ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            rows.append(f"| `{name}` | {_type_name(field.annotation)} | {_default(field)} | {field.description} |")
        parts.append(f"## {title}\n\n{doc}\n\n" + "\n".join(rows) + "\n")
    return "\n".join(parts)


def undocumented() -> list[str]:
    """Dotted keys of fields without a description: every recipe field must have one."""
    return [f"{key}.{name}" if key else name for key, model in sections()
            for name, field in model.model_fields.items() if not field.description]


if __name__ == "__main__":
    print(render(), end="")
