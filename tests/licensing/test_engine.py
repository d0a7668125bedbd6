"""The licence engine, as a table: teacher x base x prompt licence x intended use -> decision.

Each row gives the expected verdict, the student's licence, the exact set of (licence, kind)
obligations, the rules that refuse it, and one clause the decision must cite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distill.licensing import (
    Acknowledgement,
    LicenceError,
    Ref,
    UnknownLicence,
    Use,
    decide,
    load_catalog,
    render_text,
    to_dict,
)

# Shipped terms plus a made-up "Acme" licence, whose name prefix clashes with Llama's.
CATALOG = load_catalog(Path(__file__).parent / "terms")

QWEN_BASE = Ref(licence="apache-2.0", label="base qwen2.5-7b", model="Qwen/Qwen2.5-7B")
QWEN2_BASE = Ref(licence="apache-2.0", label="base qwen2-7b", model="Qwen/Qwen2-7B")
SMOL_BASE = Ref(licence="apache-2.0", label="base smollm2-135m-instruct", model="HuggingFaceTB/SmolLM2-135M-Instruct")
LLAMA2_BASE = Ref(licence="llama2", label="base llama-2-7b", model="meta-llama/Llama-2-7b-hf")
LLAMA3_BASE = Ref(licence="llama3", label="base llama-3-8b", model="meta-llama/Meta-Llama-3-8B")
LLAMA31_BASE = Ref(licence="llama3.1", label="base llama-3.1-8b", model="meta-llama/Llama-3.1-8B")

APACHE = ("apache-2.0", "licence-copy")
LLAMA31_OUT = {("llama3.1", k) for k in ("name-prefix", "display", "use-policy", "user-threshold")}
LLAMA31_WEIGHTS = LLAMA31_OUT | {("llama3.1", "licence-copy"), ("llama3.1", "notice-file")}
GEMMA_DERIVATIVE = {("gemma", k) for k in (
    "use-restrictions", "licence-copy", "modification-notice", "notice-file", "use-policy", "other")}
LLAMA3_WEIGHTS = {("llama3", k) for k in (
    "name-prefix", "licence-copy", "display", "notice-file", "use-policy", "user-threshold")}


def use(name="student-1b", commercial=True, competing=False, acks=()):
    return Use(student_name=name, commercial=commercial, competing=competing,
               acknowledge=[Acknowledgement(rule=r, reason=why) for r, why in acks])


@dataclass
class Case:
    id: str
    teachers: list
    base: Ref | None
    prompts: list
    use: Use
    verdict: str
    licence: tuple[str, str | None] | None  # (license, license_name) the card writes
    obligations: set[tuple[str, str]]
    cite: tuple[str, str]  # (rule id, or "licence/kind" of an obligation) -> a clause it must cite
    refused: set[str] = field(default_factory=set)  # rules that block (not acknowledged)


CASES = [
    Case("smollm2-into-smollm2", ["apache-2.0"], SMOL_BASE, ["apache-2.0"], use("SmolMath-135M"),
         "allowed", ("apache-2.0", None), {APACHE}, ("apache-2.0/licence-copy", "§4(a)-(d)")),
    Case("gpt-oss-apache-teacher", ["apache-2.0"], QWEN_BASE, [], use(),
         "allowed", ("apache-2.0", None), {APACHE}, ("apache-2.0/licence-copy", "§4")),
    Case("llama3.1-teacher-student-not-named-llama", ["llama3.1"], QWEN_BASE, [], use("Qwen-math-7B"),
         "refused", ("apache-2.0", None), LLAMA31_OUT | {APACHE}, ("llama3.1:name-prefix", "§1.b.i"),
         {"llama3.1:name-prefix"}),
    Case("llama3.1-teacher-student-named-llama", ["llama3.1"], QWEN_BASE, [], use("Llama-math-7B"),
         "allowed-with-obligations", ("apache-2.0", None), LLAMA31_OUT | {APACHE},
         ("llama3.1/display", "§1.b.i(B)")),
    Case("llama3.1-teacher-no-student-yet", ["llama3.1"], None, [], Use(student_name=None, commercial=None),
         "allowed-with-obligations", None, LLAMA31_OUT, ("llama3.1/name-prefix", "§1.b.i")),
    Case("llama3.1-teacher-acknowledged-name", ["llama3.1"], QWEN_BASE, [],
         use("Qwen-math-7B", acks=[("llama3.1:name-prefix", "internal evaluation model, never distributed")]),
         "allowed-with-obligations", ("apache-2.0", None), LLAMA31_OUT | {APACHE},
         ("llama3.1:name-prefix", "§1.b.i")),
    Case("llama3.2-teacher-eu-multimodal-note", ["llama3.2"], QWEN_BASE, [], use("Llama-qwen-1.5B"),
         "allowed-with-obligations", ("apache-2.0", None),
         {("llama3.2", k) for k in ("name-prefix", "display", "use-policy", "other", "user-threshold")} | {APACHE},
         ("llama3.2/other", "Acceptable Use Policy")),
    Case("llama4-teacher-into-smollm2", ["llama4"], SMOL_BASE, [], use("Llama-Smol-135M"),
         "allowed-with-obligations", ("apache-2.0", None),
         {("llama4", k) for k in ("name-prefix", "display", "use-policy", "other", "user-threshold")} | {APACHE},
         ("llama4/name-prefix", "§1.b.i")),
    Case("llama2-teacher-qwen-student", ["llama2"], QWEN_BASE, [], use("Qwen-chat-7B"),
         "refused", ("llama2", None),
         {("llama2", k) for k in ("licence-copy", "notice-file", "use-policy", "user-threshold")} | {APACHE},
         ("llama2:training", "§1.b.v"), {"llama2:training"}),
    Case("llama2-teacher-llama2-student", ["llama2"], LLAMA2_BASE, [], use("chat-7b"),
         "allowed-with-obligations", ("llama2", None),
         {("llama2", k) for k in ("licence-copy", "notice-file", "use-policy", "user-threshold", "same-family")},
         ("llama2/same-family", "§1.b.v")),
    Case("llama3-teacher-llama3-student", ["llama3"], LLAMA3_BASE, [], use("Llama-3-math-8B"),
         "allowed-with-obligations", ("llama3", None), LLAMA3_WEIGHTS | {("llama3", "same-family")},
         ("llama3/display", "§1.b.i")),
    Case("llama3-teacher-name-without-llama-3", ["llama3"], LLAMA3_BASE, [], use("math-8B"),
         "refused", ("llama3", None), LLAMA3_WEIGHTS | {("llama3", "same-family")},
         ("llama3:name-prefix", "§1.b.i"), {"llama3:name-prefix"}),
    Case("llama3-teacher-llama3.1-base", ["llama3"], LLAMA31_BASE, [], use("Llama-3-math-8B"),
         "refused", ("other", "llama3.1+llama3"), LLAMA3_WEIGHTS | LLAMA31_WEIGHTS,
         ("llama3:training", "§1.b.v"), {"llama3:training"}),
    Case("gemma-teacher-student-is-derivative", ["gemma"], QWEN_BASE, [], use("math-1.5B"),
         "allowed-with-obligations", ("gemma", None), GEMMA_DERIVATIVE | {APACHE},
         ("gemma/use-restrictions", "§3.1")),
    Case("gemma-teacher-llama3.1-base", ["gemma"], LLAMA31_BASE, [], use("Llama-gemma-8B"),
         "allowed-with-obligations", ("other", "llama3.1+gemma"), GEMMA_DERIVATIVE | LLAMA31_WEIGHTS,
         ("gemma/notice-file", "§3.1")),
    Case("openai-api-competing", ["openai-api-terms"], QWEN_BASE, [], use(competing=True),
         "refused", ("apache-2.0", None), {APACHE}, ("openai-api-terms:training", "What you cannot do"),
         {"openai-api-terms:training"}),
    Case("openai-api-not-competing", ["openai-api-terms"], QWEN_BASE, [], use(),
         "allowed-with-obligations", ("apache-2.0", None), {("openai-api-terms", "non-competing"), APACHE},
         ("openai-api-terms/non-competing", "What you cannot do")),
    Case("gemini-api-competing", ["gemini-api-terms"], QWEN_BASE, [], use(competing=True),
         "refused", ("apache-2.0", None), {("gemini-api-terms", "use-policy"), APACHE},
         ("gemini-api-terms:training", "compete"), {"gemini-api-terms:training"}),
    Case("anthropic-no-distillation", ["anthropic-terms"], QWEN_BASE, [], use(competing=False),
         "refused", ("apache-2.0", None), {APACHE}, ("anthropic-terms:training", "model distillation"),
         {"anthropic-terms:training"}),
    Case("anthropic-with-written-authorisation", ["anthropic-terms"], QWEN_BASE, [],
         use(acks=[("anthropic-terms:training", "written authorisation from Anthropic, ref. 2026-117")]),
         "allowed-with-obligations", ("apache-2.0", None), {APACHE}, ("anthropic-terms:training", "D.4")),
    Case("qwen-research-commercial", ["qwen-research"], QWEN_BASE, [], use(),
         "refused", ("apache-2.0", None),
         {("qwen-research", "display"), ("qwen-research", "non-commercial"), APACHE},
         ("qwen-research:commercial", "§2.a"), {"qwen-research:commercial"}),
    Case("qwen-research-non-commercial", ["qwen-research"], QWEN_BASE, [], use(commercial=False),
         "allowed-with-obligations", ("apache-2.0", None),
         {("qwen-research", "display"), ("qwen-research", "non-commercial"), APACHE},
         ("qwen-research/display", "§4.b")),
    Case("qwen-teacher-built-with-qwen", ["qwen"], QWEN_BASE, [], use(),
         "allowed-with-obligations", ("apache-2.0", None),
         {("qwen", "display"), ("qwen", "user-threshold"), APACHE}, ("qwen/display", "§5.b")),
    Case("tongyi-qianwen-into-llama", ["tongyi-qianwen"], LLAMA31_BASE, [], use("Llama-qwen-8B"),
         "refused", ("llama3.1", None), {("tongyi-qianwen", "user-threshold")} | LLAMA31_WEIGHTS,
         ("tongyi-qianwen:training", "§5.b"), {"tongyi-qianwen:training"}),
    Case("tongyi-qianwen-into-apache-qwen", ["tongyi-qianwen"], QWEN2_BASE, [], use(),
         "allowed-with-obligations", ("apache-2.0", None),
         {("tongyi-qianwen", "same-family"), ("tongyi-qianwen", "user-threshold"), APACHE},
         ("tongyi-qianwen/same-family", "§5.b")),
    Case("mistral-research-commercial", ["mrl"], QWEN_BASE, [], use(),
         "refused", ("apache-2.0", None), {("mrl", "other"), APACHE}, ("mrl:training", "§4.2"), {"mrl:training"}),
    Case("mistral-research-non-commercial", ["mrl"], QWEN_BASE, [], use(commercial=False),
         "allowed-with-obligations", ("apache-2.0", None), {("mrl", "research-only"), ("mrl", "other"), APACHE},
         ("mrl/research-only", "§3.2")),
    Case("mistral-non-production", ["mnpl"], QWEN_BASE, [], use(commercial=False),
         "refused", ("apache-2.0", None), {APACHE}, ("mnpl:training", "§3.2"), {"mnpl:training"}),
    Case("deepseek-r1-into-qwen", ["mit"], QWEN_BASE, [], use("R1-Distill-Qwen-7B"),
         "allowed", ("apache-2.0", None), {("mit", "licence-copy"), APACHE}, ("mit/licence-copy", "notice")),
    Case("deepseek-r1-into-llama3.1-named-llama", ["mit"], LLAMA31_BASE, [], use("Llama-R1-Distill-8B"),
         "allowed-with-obligations", ("llama3.1", None), {("mit", "licence-copy")} | LLAMA31_WEIGHTS,
         ("llama3.1/notice-file", "§1.b.iii")),
    Case("deepseek-r1-into-llama3.1-name-not-llama", ["mit"], LLAMA31_BASE, [], use("DeepSeek-R1-Distill-Llama-8B"),
         "refused", ("llama3.1", None), {("mit", "licence-copy")} | LLAMA31_WEIGHTS,
         ("llama3.1:name-prefix", "§1.b.i"), {"llama3.1:name-prefix"}),
    Case("deepseek-v3-license-derivative", ["deepseek"], QWEN_BASE, [], use(),
         "allowed-with-obligations", ("other", "deepseek"),
         {("deepseek", k) for k in ("use-restrictions", "licence-copy", "modification-notice", "notice-file", "other")}
         | {APACHE}, ("deepseek/use-restrictions", "Attachment A")),
    Case("nemotron-teacher", ["nvidia-open-model-license"], QWEN_BASE, [], use(),
         "allowed-with-obligations", ("apache-2.0", None),
         {("nvidia-open-model-license", "other"), ("nvidia-open-model-license", "use-policy"), APACHE},
         ("nvidia-open-model-license/other", "§2.1")),
    Case("cc-by-nc-prompts-commercial", ["apache-2.0"], SMOL_BASE, ["cc-by-nc-4.0"], use(),
         "refused", ("apache-2.0", None),
         {("cc-by-nc-4.0", "non-commercial"), ("cc-by-nc-4.0", "attribution"), APACHE},
         ("cc-by-nc-4.0:commercial", "§2(a)(1)"), {"cc-by-nc-4.0:commercial"}),
    Case("cc-by-nc-prompts-non-commercial", ["apache-2.0"], SMOL_BASE, ["cc-by-nc-4.0"], use(commercial=False),
         "allowed-with-obligations", ("apache-2.0", None),
         {("cc-by-nc-4.0", "non-commercial"), ("cc-by-nc-4.0", "attribution"), APACHE},
         ("cc-by-nc-4.0/non-commercial", "§1(i)")),
    Case("cc-by-prompts-attribution", ["mit"], QWEN_BASE, ["cc-by-4.0"], use(),
         "allowed-with-obligations", ("apache-2.0", None),
         {("cc-by-4.0", "attribution"), ("mit", "licence-copy"), APACHE}, ("cc-by-4.0/attribution", "§3(a)")),
    Case("cc-by-sa-prompts-share-alike", ["apache-2.0"], QWEN_BASE, ["cc-by-sa-4.0"], use(),
         "allowed-with-obligations", ("apache-2.0", None),
         {("cc-by-sa-4.0", "attribution"), ("cc-by-sa-4.0", "share-alike"), APACHE},
         ("cc-by-sa-4.0/share-alike", "§3(b)")),
    Case("odc-by-prompts", ["apache-2.0"], QWEN_BASE, ["odc-by"], use(),
         "allowed-with-obligations", ("apache-2.0", None), {("odc-by", "attribution"), APACHE},
         ("odc-by/attribution", "§4.3")),
    Case("llama-generated-prompts-are-outputs", ["apache-2.0"], QWEN_BASE, ["llama3.1"], use("qwen-math"),
         "refused", ("apache-2.0", None), LLAMA31_OUT | {APACHE}, ("llama3.1:name-prefix", "§1.b.i"),
         {"llama3.1:name-prefix"}),
    Case("two-teachers-conflicting-prefixes", ["llama3.1", "acme-model"], QWEN_BASE, [], use("Llama-math"),
         "refused", ("apache-2.0", None), LLAMA31_OUT | {("acme-model", "name-prefix"), APACHE},
         ("conflict:name-prefix", "§3"), {"conflict:name-prefix"}),
]


def run(case: Case):
    return decide(case.teachers, case.base, case.prompts, case.use, catalog=CATALOG)


def citation_of(decision, key: str) -> list[str]:
    if "/" in key:
        licence, kind = key.split("/")
        return [o.citation for o in decision.obligations if (o.licence, o.kind) == (licence, kind)]
    return [c for i in decision.issues if i.rule == key for c in i.citations]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decision(case: Case):
    d = run(case)
    assert d.verdict == case.verdict, render_text(d)
    got = None if d.student_licence is None else (d.student_licence.license, d.student_licence.license_name)
    assert got == case.licence
    assert {(o.licence, o.kind) for o in d.obligations} == case.obligations
    assert {i.rule for i in d.refusals} == case.refused
    citations = citation_of(d, case.cite[0])
    assert citations and any(case.cite[1] in c for c in citations), citations


def test_enough_scenarios():
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_finding_cites_its_source_and_every_refusal_says_the_ways_out(case: Case):
    d = run(case)
    for o in d.obligations:
        terms = CATALOG.get(o.licence)
        assert o.citation.startswith(terms.name) and terms.source.file in o.citation
        assert o.sources
    for issue in d.issues:
        assert issue.citations and issue.message and issue.sources
        if issue.blocking:
            assert any("acknowledge" in w for w in issue.ways_out)
            assert len(issue.ways_out) >= 2
    assert d.student_licence is None or d.student_licence.citation


def test_llama_refusal_suggests_a_name_and_another_teacher():
    d = decide(["llama3.1"], QWEN_BASE, [], use("Qwen-math-7B"), catalog=CATALOG)
    (issue,) = d.refusals
    assert "rename the student to 'Llama-Qwen-math-7B' (student.name)" in issue.ways_out
    assert any(w.startswith("choose another teacher") for w in issue.ways_out)


def test_strictest_prefix_and_lowest_threshold_win():
    d = decide(["llama3", "qwen"], LLAMA3_BASE, [], use("Llama-3-x"), catalog=CATALOG)
    assert d.name_prefix == "Llama 3"
    assert d.mau_threshold == 100_000_000


def test_acknowledgement_overrides_a_refusal_and_is_recorded():
    ack = Acknowledgement(rule="llama3.1:name-prefix", reason="internal evaluation model, never distributed")
    d = decide(["llama3.1"], QWEN_BASE, [], Use(student_name="Qwen-math-7B", acknowledge=[ack]), catalog=CATALOG)
    assert d.verdict == "allowed-with-obligations"
    assert d.acknowledged == [ack]
    (issue,) = [i for i in d.issues if i.rule == "llama3.1:name-prefix"]
    assert issue.acknowledged == ack and issue.blocking
    text = "\n".join(render_text(d))
    assert "ACKNOWLEDGED llama3.1:name-prefix: internal evaluation model, never distributed" in text
    assert to_dict(d)["acknowledged"] == [{"rule": "llama3.1:name-prefix", "reason": ack.reason}]


def test_acknowledgement_of_another_rule_overrides_nothing_and_says_so():
    ack = Acknowledgement(rule="llama3.1:name-prefx", reason="typo")
    d = decide(["llama3.1"], QWEN_BASE, [], Use(student_name="Qwen-math-7B", acknowledge=[ack]), catalog=CATALOG)
    assert d.verdict == "refused"
    assert d.acknowledged == []
    assert any("did you mean 'llama3.1:name-prefix'" in w for w in d.warnings)


def test_acknowledgement_needs_a_reason():
    with pytest.raises(ValueError):
        Acknowledgement(rule="llama3.1:name-prefix", reason="")


def test_unknown_licence_names_the_closest_and_the_known_ids():
    with pytest.raises(UnknownLicence) as info:
        decide(["llama-3.1"], QWEN_BASE, [], use())
    message = str(info.value)
    assert "unknown licence 'llama-3.1' (did you mean 'llama3.1'?)" in message
    assert "known licences:" in message and "apache-2.0" in message and "gemma" in message


def test_licence_lookup_ignores_case_and_knows_aliases():
    d = decide(["MIT"], Ref(licence="Apache-2.0"), [], use())
    assert d.student_licence.license == "apache-2.0"
    assert {s.licence for s in d.sources} == {"mit", "apache-2.0"}


@pytest.mark.parametrize("teachers,base", [(["cc-by-4.0"], QWEN_BASE), (["mit"], Ref(licence="openai-api-terms"))])
def test_a_licence_in_the_wrong_slot_is_an_error(teachers, base):
    with pytest.raises(LicenceError, match="cannot be a"):
        decide(teachers, base, [], use())


def test_eval_prompts_owe_only_their_dataset_terms():
    d = decide(["apache-2.0"], QWEN_BASE, [], use(), eval_prompts=["cc-by-4.0", "llama3.1", "llama2"])
    assert d.verdict == "allowed-with-obligations"
    assert {(o.licence, o.kind) for o in d.obligations} == {APACHE, ("cc-by-4.0", "attribution")}


def test_render_and_dict():
    d = decide(["llama3.1"], QWEN_BASE, ["cc-by-nc-4.0"], use("Qwen-math-7B"))
    lines = render_text(d)
    assert lines[0] == "licence decision: refused"
    assert any(line.startswith("REFUSED llama3.1:name-prefix") for line in lines)
    assert any(line.startswith("REFUSED cc-by-nc-4.0:commercial") for line in lines)
    assert any("cites: Llama 3.1 Community License Agreement §1.b.i" in line for line in lines)
    data = json.loads(json.dumps(to_dict(d)))
    assert data["verdict"] == "refused"
    assert {i["rule"] for i in data["issues"]} == {"llama3.1:name-prefix", "cc-by-nc-4.0:commercial"}


def test_records_are_strict_and_each_part_lives_in_its_module():
    from pydantic import ValidationError

    from distill.licensing import engine, render, types
    from distill.schema import Strict

    for name in ("Acknowledgement", "Ref", "Use", "SourceRole", "Obligation", "Issue", "StudentLicence", "Decision"):
        assert issubclass(getattr(types, name), Strict), name
    with pytest.raises(ValidationError, match="student_nme"):
        Use(student_nme="x")
    assert (engine.decide, render.render_text, render.to_dict) == (decide, render_text, to_dict)
