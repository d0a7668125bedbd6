"""The licence engine's records: what goes in (references, intended use, acknowledgements) and
the decision that comes out (issues, obligations, the student's licence).

They are plain data so a decision can be saved in lineage.json and read back without the engine.
"""

from __future__ import annotations

from typing import Literal


from distill.licensing.terms import Role
from distill.schema import Acknowledgement, Strict  # noqa: F401  (Acknowledgement: part of this module's records)

Verdict = Literal["allowed", "allowed-with-obligations", "refused"]


class LicenceError(ValueError):
    """An input the engine cannot judge (a dataset licence given for a teacher, a base of unknown licence)."""


class Ref(Strict):
    """One licensed input: its licence id and, for messages and family checks, what it is."""

    licence: str
    label: str = ""  # e.g. "teacher llama-3.1-405b-instruct"
    model: str | None = None  # hub id; a Qwen base under Apache-2.0 is still a Qwen model


class Use(Strict):
    # None: not named yet (a dataset-only run); name rules then become obligations.
    student_name: str | None = None
    # None: not declared; non-commercial terms then become obligations instead of refusals.
    commercial: bool | None = True
    competing: bool = False  # the student competes with an API provider whose outputs it learns from
    acknowledge: list[Acknowledgement] = []


class SourceRole(Strict):
    label: str
    licence: str
    role: Role
    why: str


class Obligation(Strict):
    licence: str
    kind: str
    what: str
    text: str | None = None  # to ship or display verbatim
    url: str | None = None
    value: int | str | None = None  # a name prefix, a user threshold
    routine: bool  # only travels with copies (ship the licence, keep notices)
    citation: str
    sources: list[str]


class Issue(Strict):
    rule: str  # "<licence>:<aspect>" or "conflict:<aspect>"; an acknowledgement names it
    kind: Literal["refusal", "conflict"]
    blocking: bool
    message: str
    sources: list[str]
    citations: list[str]
    ways_out: list[str]
    acknowledged: Acknowledgement | None = None


class StudentLicence(Strict):
    license: str  # the card's `license`: a hub id, or "other"
    license_name: str | None = None
    license_link: str | None = None
    governed_by: list[str]  # licence ids whose terms govern the weights
    citation: str


class Decision(Strict):
    verdict: Verdict
    student: str | None
    commercial: bool | None
    competing: bool
    student_licence: StudentLicence | None  # None: no base and no teacher claims the weights
    name_prefix: str | None  # the strictest prefix every source accepts
    non_commercial: bool
    mau_threshold: int | None  # the lowest user threshold of any source
    sources: list[SourceRole]
    issues: list[Issue]
    obligations: list[Obligation]
    acknowledged: list[Acknowledgement]
    warnings: list[str]

    @property
    def refusals(self) -> list[Issue]:
        return [i for i in self.issues if i.blocking and i.acknowledged is None]
