"""Licence terms as data: one YAML file per licence in terms/, checked by the schema below.

Each file says, in our own words, what a licence lets a teacher's outputs do, what a student
then owes, and the clause every rule comes from. The engine reads only these fields, so a
new licence is a new file, never a new `if` in code.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from distill.registry import closest
from distill.schema import Strict

HERE = Path(__file__).parent / "terms"

# How a licence's material reaches the student:
#   outputs: text a model under this licence generated is in the training data (a teacher);
#   prompts: a dataset under this licence is in the training data or the published dataset;
#   weights: the student's weights derive from material under this licence (its base model,
#            or a teacher whose terms make the student a derivative).
Role = Literal["outputs", "prompts", "weights"]
ROLES: tuple[Role, ...] = ("outputs", "prompts", "weights")

# What may be trained on text under the licence (role outputs or prompts).
Condition = Literal["any", "same-family", "non-competing", "research-only", "none"]

# Obligation kinds. Routine ones only travel with copies of the material (ship the licence,
# keep notices); the rest change what the student's publisher must do.
ObligationKind = Literal[
    "licence-copy", "notice-file", "modification-notice",
    "display", "attribution", "share-alike", "use-policy", "use-restrictions", "other",
]
ROUTINE_KINDS = frozenset({"licence-copy", "notice-file", "modification-notice"})


class Source(Strict):
    file: str = Field(min_length=1, description="the file licences.md names, e.g. 'meta-llama/llama-models models/llama3_1/LICENSE'")
    url: str = Field(pattern=r"^https://")


class Hub(Strict):
    """How a Hugging Face card writes the licence: a hub id, or `other` with a name and a link."""

    license: str = Field(min_length=1)
    license_name: str | None = None
    license_link: str | None = Field(None, pattern=r"^https://")

    @model_validator(mode="after")
    def _other_needs_name_and_link(self):
        if self.license == "other" and not (self.license_name and self.license_link):
            raise ValueError("license 'other' needs license_name and license_link")
        if self.license != "other" and self.license_name:
            raise ValueError("license_name is only for license 'other'")
        return self


class Family(Strict):
    """The models whose training the licence allows (Llama 2 outputs may only improve Llama 2)."""

    name: str
    base_licences: list[str] = Field(min_length=1)
    # A base under a permissive licence can still belong to the family (Qwen2-7B is Apache-2.0).
    base_model_pattern: str | None = None

    @field_validator("base_model_pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v


class Training(Strict):
    condition: Condition
    clause: str = Field(min_length=1)
    note: str = Field(min_length=1)
    family: Family | None = None  # for same-family
    provider: str | None = None  # for non-competing: whom the student must not compete with

    @model_validator(mode="after")
    def _condition_has_its_data(self):
        if (self.condition == "same-family") != (self.family is not None):
            raise ValueError("family is required for condition same-family, and only for it")
        if (self.condition == "non-competing") != (self.provider is not None):
            raise ValueError("provider is required for condition non-competing, and only for it")
        return self


class Derivative(Strict):
    student_is_derivative: bool  # training on outputs makes the student a derivative of the teacher
    clause: str = Field(min_length=1)
    note: str = Field(min_length=1)


class Commercial(Strict):
    allowed: bool
    clause: str = Field(min_length=1)
    note: str = Field(min_length=1)
    applies_to: list[Role] = list(ROLES)


class NamePrefix(Strict):
    prefix: str = Field(min_length=1)
    # What a compliant name matches; default: it starts with the prefix exactly.
    pattern: str | None = None
    clause: str = Field(min_length=1)
    note: str = Field(min_length=1)
    applies_to: list[Role] = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            re.compile(v)
        return v

    def matches(self, name: str) -> bool:
        return re.match(self.pattern or re.escape(self.prefix), name) is not None


class Duty(Strict):
    kind: ObligationKind
    what: str = Field(min_length=1, description="what to do, in our words")
    text: str | None = None  # a string the licence requires shipped or displayed verbatim
    url: str | None = Field(None, pattern=r"^https://")
    clause: str = Field(min_length=1)
    applies_to: list[Role] = Field(min_length=1)


class UserThreshold(Strict):
    monthly_active_users: int = Field(gt=0)
    what: str = Field(min_length=1)
    clause: str = Field(min_length=1)
    applies_to: list[Role] = Field(min_length=1)


class Terms(Strict):
    id: str = Field(description="the id teacher and prompt `licence:` fields use (hub id, SPDX id or hub license_name)")
    aliases: list[str] = []  # other spellings accepted on lookup (SPDX case, hub names)
    name: str
    kind: Literal["model", "api", "dataset", "any"]  # what it licenses: model weights, an API, data, or anything
    hub: Hub | None = None  # None: terms of a service, never a licence for weights
    source: Source
    checked: str  # when the facts were last checked against the source
    # A derivative may carry additional, stricter terms (Apache-2.0 §4, MIT), so another
    # licence can govern a student built on this base.
    permissive: bool
    training: Training
    derivative: Derivative
    commercial: Commercial
    name_prefix: NamePrefix | None = None
    obligations: list[Duty] = []
    user_threshold: UserThreshold | None = None
    notes: list[str] = []  # readings we are unsure of, said so rather than hidden

    @model_validator(mode="after")
    def _consistent(self):
        if self.kind == "api":
            if self.hub is not None or self.derivative.student_is_derivative or self.permissive:
                raise ValueError("API terms license no weights: no hub entry, no derivative, not permissive")
        elif self.hub is None:
            raise ValueError(f"kind {self.kind} needs a hub entry (how a card writes the licence)")
        elif self.id not in (self.hub.license, self.hub.license_name):
            raise ValueError(f"id {self.id!r} must be the hub license or license_name")
        return self

    def cite(self, clause: str) -> str:
        return f"{self.name} {clause} ({self.source.file})"


class UnknownLicence(ValueError):
    pass


def load_file(path: Path) -> Terms:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML: {e}") from None
    terms = Terms.model_validate(data)
    if terms.id != path.stem:
        raise ValueError(f"{path.name}: id {terms.id!r} must match the file name")
    return terms


class Catalog:
    """Every known licence, looked up by id or alias, case-insensitively."""

    def __init__(self, terms: list[Terms]):
        self.terms: dict[str, Terms] = {}
        for t in terms:
            if t.id in self.terms:
                raise ValueError(f"licence {t.id!r} is defined twice")
            self.terms[t.id] = t
        self._keys: dict[str, str] = {}
        for t in terms:
            for key in (t.id, *t.aliases):
                if self._keys.setdefault(key.lower(), t.id) != t.id:
                    raise ValueError(f"licence key {key!r} is claimed by {self._keys[key.lower()]!r} and {t.id!r}")

    def ids(self) -> list[str]:
        return sorted(self.terms)

    def get(self, licence: str) -> Terms:
        tid = self._keys.get(str(licence).strip().lower())
        if tid is None:
            raise UnknownLicence(self.unknown(licence))
        return self.terms[tid]

    def unknown(self, licence: str) -> str:
        hint = closest(str(licence).lower(), list(self._keys))
        tail = f" (did you mean {self._keys[hint]!r}?)" if hint else ""
        return (
            f"unknown licence {licence!r}{tail}; known licences: {', '.join(self.ids())}; "
            f"or add a terms file to {HERE}"
        )


def load_catalog(*extra_dirs: Path) -> Catalog:
    """The shipped terms plus any in extra_dirs (a team's private terms); ids must not clash."""
    terms = [load_file(p) for d in (HERE, *extra_dirs) for p in sorted(Path(d).glob("*.yaml"))]
    return Catalog(terms)


@lru_cache(maxsize=1)
def shipped() -> Catalog:
    return load_catalog()
