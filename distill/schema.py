"""The bottom layer's shared records: the strict base every file-backed model uses.

Everything that reads what a user wrote (recipes, teacher entries, licence terms, component
parameters) derives from `Strict`, so an unknown key is an error everywhere, never ignored.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A model whose unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
