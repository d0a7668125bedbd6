"""The recipe key reference is generated from the schema, and every field has a description."""

from __future__ import annotations

from pathlib import Path

from distill.recipe.reference import render, sections, undocumented

PAGE = Path(__file__).resolve().parents[2] / "docs" / "recipe-reference.md"


def test_every_recipe_field_has_a_description():
    assert undocumented() == []


def test_the_committed_reference_is_what_the_schema_generates():
    assert PAGE.read_text() == render(), (
        "docs/recipe-reference.md is stale: run `python -m distill.recipe.reference > docs/recipe-reference.md`")


def test_the_reference_covers_every_section_and_key():
    page = render()
    found = sections()
    assert len(found) > 10
    for key, model in found:
        for name in model.model_fields:
            assert f"| `{name}` |" in page, f"{key}.{name} missing from the reference"
