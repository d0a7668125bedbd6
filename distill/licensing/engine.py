"""The licence engine: teachers, base model, prompt sources and intended use in; a decision out.

The code is generic over the terms files (terms/*.yaml): every rule it applies is a field of
some licence's terms, and every finding cites that licence's clause. Obligations combine over
every source, the strictest wins, and conflicts are reported, never resolved silently. A
refusal stands unless the user records an acknowledgement naming its rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from distill.licensing.terms import ROUTINE_KINDS, Catalog, Role, Terms, shipped
from distill.registry import closest

Verdict = Literal["allowed", "allowed-with-obligations", "refused"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LicenceError(ValueError):
    """An input the engine cannot judge (a dataset licence given for a teacher, a base of unknown licence)."""


class Acknowledgement(Strict):
    """An explicit, recorded decision to go ahead despite a refusal; it names the rule it overrides."""

    rule: str = Field(min_length=1, description="the refused rule's id, e.g. 'llama3.1:name-prefix'")
    reason: str = Field(min_length=1, description="why it is acceptable: a written permission, an internal-only model, ...")


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


@dataclass(frozen=True)
class _Entry:
    ref: Ref
    terms: Terms
    slot: str  # teacher, base, prompt source, eval prompt source: what a way out replaces
    role: Role
    why: str

    @property
    def where(self) -> str:
        return f"{self.ref.label or self.slot} ({self.role})"


_SLOT_KINDS = {
    "teacher": ("model", "api", "any"),
    "base model": ("model", "any"),
    "prompt source": ("model", "api", "any", "dataset"),
    "eval prompt source": ("model", "api", "any", "dataset"),
}


def _norm(prefix: str) -> str:
    return re.sub(r"[\s_-]+", "", prefix).lower()


class _Decider:
    def __init__(self, catalog: Catalog, use: Use):
        self.catalog = catalog
        self.use = use
        self.entries: list[_Entry] = []
        self.issues: dict[str, Issue] = {}
        self.obligations: dict[tuple, Obligation] = {}
        self.warnings: list[str] = []
        self.non_commercial = False

    # -- inputs ---------------------------------------------------------------------------

    def add(self, ref: Ref, slot: str, role: Role | None = None, why: str = "") -> None:
        terms = self.catalog.get(ref.licence)
        if terms.kind not in _SLOT_KINDS[slot]:
            raise LicenceError(
                f"{ref.label or slot}: {terms.id} ({terms.name}) licenses {terms.kind}, it cannot be a {slot}'s licence"
            )
        if role is None:
            # Prompts under a model's or an API's terms were generated by it: they are outputs.
            role = "outputs" if slot == "prompt source" and terms.kind in ("model", "api") else "prompts"
        ref = ref if ref.label else ref.model_copy(update={"label": f"{slot} {ref.licence}"})
        self.entries.append(_Entry(ref, terms, slot, role, why or role))

    def add_derivatives(self) -> None:
        """A teacher whose terms make the student a derivative also governs its weights."""
        for e in list(self.entries):
            d = e.terms.derivative
            if e.role in ("outputs", "prompts") and d.student_is_derivative and e.slot != "eval prompt source":
                self.entries.append(_Entry(e.ref, e.terms, e.slot, "weights", f"student is a derivative: {e.terms.cite(d.clause)}"))

    def by_role(self, *roles: Role) -> list[_Entry]:
        return [e for e in self.entries if e.role in roles]

    @property
    def base(self) -> _Entry | None:
        return next((e for e in self.entries if e.slot == "base model"), None)

    # -- findings -------------------------------------------------------------------------

    def oblige(self, e: _Entry, kind: str, what: str, clause: str, *, text=None, url=None, value=None) -> None:
        key = (e.terms.id, kind, what, text)
        if key in self.obligations:
            self.obligations[key].sources.append(e.where)
            return
        self.obligations[key] = Obligation(
            licence=e.terms.id, kind=kind, what=what, text=text, url=url, value=value,
            routine=kind in ROUTINE_KINDS, citation=e.terms.cite(clause), sources=[e.where],
        )

    def refuse(self, rule: str, kind: str, message: str, entries: list[_Entry], citations: list[str],
               ways_out: list[str], blocking: bool = True) -> None:
        if rule in self.issues:  # the same licence in two slots: one issue, both sources
            self.issues[rule].sources.extend(e.where for e in entries)
            return
        if blocking:
            ways_out = ways_out + [
                f"go ahead only with an explicit, recorded acknowledgement: "
                f"student.acknowledge: [{{rule: {rule}, reason: <why this is acceptable>}}]"
            ]
        self.issues[rule] = Issue(
            rule=rule, kind=kind, blocking=blocking, message=message, sources=[e.where for e in entries],
            citations=citations, ways_out=ways_out,
        )

    @staticmethod
    def other(e: _Entry) -> str:
        return f"choose another {e.slot} (one whose licence allows this, e.g. apache-2.0 or mit)"

    # -- rules ----------------------------------------------------------------------------

    def check_training(self) -> None:
        for e in self.by_role("outputs", "prompts"):
            if e.slot == "eval prompt source":  # held out: never trained on
                continue
            t = e.terms.training
            cite = e.terms.cite(t.clause)
            rule = f"{e.terms.id}:training"
            what = f"{e.terms.name}: {t.note}"
            if t.condition == "same-family":
                fam = t.family
                assert fam is not None
                base = self.base
                if base is None:
                    self.oblige(e, "same-family", f"only a {fam.name} model may be trained on this data. {t.note}", t.clause)
                elif base.terms.id in fam.base_licences or (
                    fam.base_model_pattern and base.ref.model and re.search(fam.base_model_pattern, base.ref.model)
                ):
                    self.oblige(e, "same-family", f"the student is allowed only as a {fam.name} derivative. {t.note}", t.clause)
                else:
                    self.refuse(rule, "refusal", f"{what} The base {base.ref.label} ({base.terms.id}) is not a {fam.name} model.",
                                [e], [cite], [f"use a {fam.name} base model (licence {', '.join(fam.base_licences)})", self.other(e)])
            elif t.condition == "non-competing":
                if self.use.competing:
                    self.refuse(rule, "refusal", f"{what} The student is declared as competing with {t.provider}.", [e], [cite], [
                        f"if the student does not compete with {t.provider}, declare it: student.competing: false",
                        self.other(e),
                    ])
                else:
                    self.oblige(e, "non-competing", f"the student must not compete with {t.provider}. {t.note}", t.clause)
            elif t.condition == "research-only":
                self.non_commercial = True
                if self.use.commercial:
                    self.refuse(rule, "refusal", f"{what} The student is declared for commercial use.", [e], [cite], [
                        "declare non-commercial research use: student.commercial_use: false", self.other(e),
                    ])
                else:
                    self.oblige(e, "research-only", t.note, t.clause)
            elif t.condition == "none":
                self.refuse(rule, "refusal", f"{what} No student trained on it can be released.", [e], [cite], [
                    self.other(e), "get the licensor's written permission, then acknowledge this rule citing it",
                ])

    def check_commercial(self) -> None:
        for e in self.entries:
            c = e.terms.commercial
            if c.allowed or e.role not in c.applies_to:
                continue
            self.non_commercial = True
            self.oblige(e, "non-commercial", f"non-commercial use only. {c.note}", c.clause)
            if self.use.commercial:
                self.refuse(f"{e.terms.id}:commercial", "conflict",
                            f"{e.terms.name}: {c.note} The student is declared for commercial use.",
                            [e], [e.terms.cite(c.clause)],
                            ["declare non-commercial use: student.commercial_use: false", self.other(e)])

    def check_name(self) -> str | None:
        demands = [(e, e.terms.name_prefix) for e in self.entries
                   if e.terms.name_prefix and e.role in e.terms.name_prefix.applies_to]
        if not demands:
            return None
        for e, rule in demands:
            self.oblige(e, "name-prefix", rule.note, rule.clause, value=rule.prefix)
        strictest = max((r.prefix for _, r in demands), key=lambda p: len(_norm(p)))
        if not all(_norm(strictest).startswith(_norm(r.prefix)) for _, r in demands):
            wanted = sorted({f"{r.prefix!r} ({e.terms.id})" for e, r in demands})
            self.refuse("conflict:name-prefix", "conflict",
                        f"the sources demand names beginning with different prefixes: {', '.join(wanted)}; no name satisfies all",
                        [e for e, _ in demands], [e.terms.cite(r.clause) for e, r in demands],
                        list(dict.fromkeys(f"drop {e.ref.label} and choose another {e.slot} without a name rule"
                                           for e, _ in demands)))
            return None
        name = self.use.student_name
        if name is None:
            return strictest
        suggestion = f"{strictest.replace(' ', '-')}-{name}"
        for e, rule in demands:
            if not rule.matches(name):
                self.refuse(f"{e.terms.id}:name-prefix", "refusal",
                            f"the student's name {name!r} must begin with {rule.prefix!r}: {rule.note}",
                            [e], [e.terms.cite(rule.clause)],
                            [f"rename the student to {suggestion!r} (student.name)", self.other(e)])
        return strictest

    def collect_duties(self) -> int | None:
        thresholds = []
        for e in self.entries:
            for d in e.terms.obligations:
                if e.role in d.applies_to:
                    self.oblige(e, d.kind, d.what, d.clause, text=d.text, url=d.url)
            u = e.terms.user_threshold
            if u and e.role in u.applies_to:
                self.oblige(e, "user-threshold", u.what, u.clause, value=u.monthly_active_users)
                thresholds.append(u.monthly_active_users)
        return min(thresholds, default=None)

    def student_licence(self) -> StudentLicence | None:
        weights = self.by_role("weights")
        if not weights:
            return None
        governing: dict[str, _Entry] = {}
        for e in weights:
            if not e.terms.permissive:
                governing.setdefault(e.terms.id, e)
        if not governing:  # permissive weights only: the base's licence
            e = self.base or weights[0]
            governing[e.terms.id] = e
        why = [self._why(e) for e in governing.values()]
        why += [f"{e.terms.cite(e.terms.derivative.clause)} lets a derivative of {e.ref.label} carry further terms"
                for e in weights if e.terms.permissive and e.terms.id not in governing]
        if len(governing) == 1:
            e = next(iter(governing.values()))
            hub = e.terms.hub
            assert hub is not None
            return StudentLicence(license=hub.license, license_name=hub.license_name, license_link=hub.license_link,
                                  governed_by=[e.terms.id], citation="; ".join(why))
        ids = list(governing)
        self.refuse("conflict:licence", "conflict",
                    f"the student's weights fall under {len(ids)} licences at once ({', '.join(ids)}): ship every "
                    "agreement and meet every one; a card's `license` names only one, so it says `other`",
                    list(governing.values()), why,
                    ["choose a base model under a permissive licence (apache-2.0, mit) so one set of terms governs",
                     "choose teachers whose terms do not make the student a derivative"], blocking=False)
        return StudentLicence(license="other", license_name="+".join(ids), governed_by=ids, citation="; ".join(why))

    def _why(self, e: _Entry) -> str:
        if e.slot == "base model":
            return (f"{e.ref.label} is under {e.terms.name} ({e.terms.source.file}); a fine-tuned student keeps its "
                    "base model's licence unless a teacher's terms make it a derivative (licences.md, rules that follow)")
        return e.why

    def apply_acknowledgements(self) -> list[Acknowledgement]:
        used = []
        for ack in self.use.acknowledge:
            issue = self.issues.get(ack.rule)
            if issue is not None and issue.blocking:
                issue.acknowledged = ack
                used.append(ack)
                continue
            rules = [r for r, i in self.issues.items() if i.blocking]
            hint = closest(ack.rule, rules)
            self.warnings.append(
                f"acknowledgement of {ack.rule!r} matches no refusal here, so it overrides nothing"
                + (f" (did you mean {hint!r}?)" if hint else "")
            )
        return used


def _as_ref(x: str | Ref | dict) -> Ref:
    if isinstance(x, Ref):
        return x
    return Ref(licence=x) if isinstance(x, str) else Ref.model_validate(x)


def decide(
    teachers: Sequence[str | Ref],
    base: str | Ref | None,
    prompts: Sequence[str | Ref] = (),
    use: Use | None = None,
    *,
    eval_prompts: Sequence[str | Ref] = (),
    catalog: Catalog | None = None,
) -> Decision:
    """Decide whether a student may be trained and released from these sources, and what it owes.

    Licences are ids of terms files (teacher and prompt `licence:` values). `eval_prompts` are
    held out: never trained on, so only their dataset terms (attribution, non-commercial) apply.
    Raises UnknownLicence (naming the known ids) or LicenceError for inputs it cannot judge.
    """
    use = use or Use()
    d = _Decider(catalog or shipped(), use)
    for t in teachers:
        d.add(_as_ref(t), "teacher", "outputs", "teacher outputs")
    if base is not None:
        d.add(_as_ref(base), "base model", "weights", "base model")
    for p in prompts:
        d.add(_as_ref(p), "prompt source")
    for p in eval_prompts:
        d.add(_as_ref(p), "eval prompt source", "prompts")
    d.add_derivatives()

    student_licence = d.student_licence()
    d.check_training()
    d.check_commercial()
    prefix = d.check_name()
    mau = d.collect_duties()
    acknowledged = d.apply_acknowledgements()

    issues = list(d.issues.values())
    obligations = list(d.obligations.values())
    if any(i.blocking and i.acknowledged is None for i in issues):
        verdict: Verdict = "refused"
    elif issues or d.non_commercial or any(not o.routine for o in obligations):
        verdict = "allowed-with-obligations"
    else:
        verdict = "allowed"
    return Decision(
        verdict=verdict, student=use.student_name, commercial=use.commercial, competing=use.competing,
        student_licence=student_licence, name_prefix=prefix, non_commercial=d.non_commercial, mau_threshold=mau,
        sources=[SourceRole(label=e.ref.label, licence=e.terms.id, role=e.role, why=e.why) for e in d.entries],
        issues=issues, obligations=obligations, acknowledged=acknowledged, warnings=d.warnings,
    )


# -- recipes ------------------------------------------------------------------------------


def _acknowledgements(items: Any) -> list[Acknowledgement]:
    out = []
    for item in items or []:
        if isinstance(item, BaseModel):
            item = item.model_dump()
        out.append(Acknowledgement.model_validate(item))
    return out


def _licence_from_card(model_dir: Path) -> str | None:
    """The `license` (or `license_name` for `other`) in a local model's README.md front matter."""
    import yaml

    readme = model_dir / "README.md"
    if not readme.is_file():
        return None
    parts = readme.read_text(errors="replace").split("---", 2)
    if len(parts) < 3 or parts[0].strip():
        return None
    try:
        meta = yaml.safe_load(parts[1]) or {}
    except yaml.YAMLError:
        return None
    if not isinstance(meta, dict):
        return None
    lic = meta.get("license")
    return meta.get("license_name") if lic == "other" else lic


def _base_ref(student: Any, base_dir: Path) -> Ref:
    from distill.teachers import load_teacher

    declared = getattr(student, "base_licence", None)
    try:
        entry = load_teacher(student.base, base_dir)
    except ValueError:
        entry = None
    if entry is not None:
        if declared and declared != entry.licence:
            raise LicenceError(
                f"student.base_licence {declared!r} contradicts teacher entry {entry.id!r} (licence {entry.licence!r}); "
                "remove base_licence or fix the entry"
            )
        return Ref(licence=entry.licence, label=f"base {entry.id}", model=entry.model)
    licence = declared or _licence_from_card(base_dir / student.base)
    if not licence:
        raise LicenceError(
            f"cannot tell the licence of base model {student.base!r}: name a teacher id or teacher YAML, "
            "give the model directory a README.md with a `license:` field, or set student.base_licence"
        )
    return Ref(licence=licence, label=f"base {student.base}", model=student.base)


def decide_for_recipe(recipe: Any) -> Decision:
    """The decision for a loaded recipe: its teacher, its student (name, base, use) and its prompt sources."""
    from distill.teachers import load_teacher

    teacher = load_teacher(recipe.teacher.id, recipe.base_dir)
    teachers = [Ref(licence=teacher.licence, label=f"teacher {teacher.id}", model=teacher.model)]
    prompts = [Ref(licence=c.params.licence, label=f"prompts.train[{i}] {c.source}")
               for i, c in enumerate(recipe.prompts.train)]
    eval_prompts = [Ref(licence=c.params.licence, label=f"prompts.eval[{i}] {c.source}")
                    for i, c in enumerate(recipe.prompts.eval)]
    student = recipe.student
    if student is None:  # samples only: rules about the student become obligations on whoever trains one
        return decide(teachers, None, prompts, Use(student_name=None, commercial=None), eval_prompts=eval_prompts)
    use = Use(
        student_name=student.name,
        commercial=student.commercial_use,
        competing=getattr(student, "competing", False),
        acknowledge=_acknowledgements(getattr(student, "acknowledge", [])),
    )
    return decide(teachers, _base_ref(student, recipe.base_dir), prompts, use, eval_prompts=eval_prompts)


# -- output -------------------------------------------------------------------------------


def to_dict(decision: Decision) -> dict[str, Any]:
    """A JSON-able dict (for lineage.json and `--json` output)."""
    return decision.model_dump(mode="json")


def render_text(decision: Decision) -> list[str]:
    """Plain text lines for a CLI: verdict first, then what blocks, then what is owed."""
    d = decision
    use = {True: "commercial use", False: "non-commercial use", None: "use not declared"}[d.commercial]
    lines = [
        f"licence decision: {d.verdict}",
        f"student: {d.student or '(not named)'}; {use}; {'competing' if d.competing else 'not competing'} with API providers",
    ]
    if d.student_licence:
        s = d.student_licence
        extra = "".join(f", {k}: {v}" for k, v in (("license_name", s.license_name), ("license_link", s.license_link)) if v)
        lines.append(f"student licence: {s.license}{extra}  [{s.citation}]")
    if d.name_prefix:
        lines.append(f"name must begin with: {d.name_prefix!r}")
    if d.non_commercial:
        lines.append("non-commercial use only")
    if d.mau_threshold:
        lines.append(f"lowest user threshold: {d.mau_threshold:,} monthly active users")
    lines.append("sources:")
    lines += [f"  {s.label}: {s.licence} ({s.role}; {s.why})" for s in d.sources]
    for issue in d.issues:
        if issue.acknowledged:
            head = f"ACKNOWLEDGED {issue.rule}: {issue.acknowledged.reason}"
        else:
            head = f"{'REFUSED' if issue.blocking else 'CONFLICT (not blocking)'} {issue.rule}: {issue.message}"
        lines.append(head)
        if issue.acknowledged:
            lines.append(f"  overrides: {issue.message}")
        lines.append(f"  from: {', '.join(issue.sources)}")
        lines += [f"  cites: {c}" for c in issue.citations]
        if issue.blocking and not issue.acknowledged:
            lines.append("  ways out:")
            lines += [f"    - {w}" for w in issue.ways_out]
    if d.obligations:
        lines.append("obligations:")
    for o in d.obligations:
        shown = "".join([f' "{o.text}"' if o.text else "", f" <{o.url}>" if o.url else ""])
        lines.append(f"  - [{o.kind}] {o.what}{shown}")
        lines.append(f"      cites: {o.citation}; from: {', '.join(o.sources)}")
    lines += [f"warning: {w}" for w in d.warnings]
    return lines
