"""The custom probe: a recipe's prompt source judged by the verifiers it names."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from distill.probes import Ratio
from distill.probes.custom import CustomParams, CustomProbe
from distill.schema import Verdict
from distill.verifiers import VERIFIERS

PROBE = CustomProbe()


def always_wrong(completions, references, params, ctx):
    """A stand-in for an LLM judge: rejects every answer."""
    return [Verdict(0.0, "judged wrong")] * len(completions)


always_wrong.uses_model = True


@pytest.fixture
def folder(tmp_path):
    rows = [{"question": "What is 2 + 2?", "answer": "4"},
            {"question": "What is 3 + 4?", "answer": "7"},
            {"question": "What is 2 + 2?", "answer": "4"},  # the same prompt again: one item
            {"question": "Name a colour.", "answer": "blue"}]  # no number: final-number cannot judge
    (tmp_path / "held_out.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return tmp_path


def params(folder, verifiers=None, **source) -> CustomParams:
    spec = {"source": {"source": "jsonl", "path": "held_out.jsonl", "answer_field": "answer", "licence": "cc-by-4.0",
                       **source},
            "verifiers": verifiers if verifiers is not None else [{"name": "final-number"}]}
    return CustomParams.model_validate(spec, context={"base_dir": folder})


def test_the_source_is_read_as_in_a_recipe_relative_to_its_folder(folder):
    probe_set = PROBE.load(params(folder), None, 0)
    assert probe_set.total == len(probe_set.items) == 3
    assert [i.requests for i in probe_set.items] == [[{"messages": [{"role": "user", "content": q}]}] for q in
                                                     ("What is 2 + 2?", "What is 3 + 4?", "Name a colour.")]
    assert [i.data["reference"] for i in probe_set.items] == ["4", "7", "blue"]
    assert probe_set.source == "jsonl:held_out.jsonl" and probe_set.licence == "cc-by-4.0"
    assert len({i.id for i in probe_set.items}) == 3 and all(i.id.startswith("custom:") for i in probe_set.items)


def test_a_right_answer_passes_a_wrong_one_fails_and_an_unjudged_one_is_not_counted(folder):
    p = params(folder)
    items = PROBE.load(p, None, 0).items
    got = PROBE.score(items + items[:1], [["2 + 2 = 4"], ["3 + 4 = 8"], ["Blue."], [None]], p)
    assert [r["accuracy"] for r in got] == [Ratio(1, 1), Ratio(0, 1), Ratio(0, 0), Ratio(0, 1)]


def test_each_verifier_must_reach_its_threshold_and_one_failure_decides(folder):
    within = params(folder, [{"name": "final-number", "tolerance": 1}])
    items = PROBE.load(within, None, 0).items
    assert PROBE.score(items[1:2], [["It is 8"]], within)[0]["accuracy"] == Ratio(1, 1)
    # match needs the whole answer; final-number cannot read "blue" but match fails it: wrong
    both = params(folder, [{"name": "final-number"}, {"name": "match"}])
    got = PROBE.score(items, [["4"], ["The sum is 7"], ["red"]], both)
    assert [r["accuracy"] for r in got] == [Ratio(1, 1), Ratio(0, 1), Ratio(0, 1)]


def test_conversation_rows_keep_their_turns_and_tools(tmp_path):
    tool = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}}
    row = {"messages": [{"role": "user", "content": "Add 2 and 3."}], "tools": [tool],
           "answer": {"expected": [{"name": "add", "arguments": {"a": 2, "b": 3}}]}}
    (tmp_path / "calls.jsonl").write_text(json.dumps(row) + "\n")
    p = CustomParams.model_validate({
        "source": {"source": "jsonl", "path": "calls.jsonl", "messages_field": "messages", "tools_field": "tools",
                   "answer_field": "answer", "licence": "mit"},
        "verifiers": [{"name": "tool-call", "require_all": True}]}, context={"base_dir": tmp_path})
    (item,) = PROBE.load(p, None, 0).items
    assert item.requests[0]["tools"][0]["function"]["name"] == "add"
    assert item.requests[0]["messages"][-1]["content"] == "Add 2 and 3."
    answers = ['<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 3}}\n</tool_call>',
               '<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": 4}}\n</tool_call>']
    assert [r["accuracy"] for r in PROBE.score([item, item], [[a] for a in answers], p)] == [Ratio(1, 1), Ratio(0, 1)]


@pytest.mark.parametrize("verifiers, message", [
    ([{"name": "final-numbr"}], r"unknown verifier 'final-numbr' \(did you mean 'final-number'\?\)"),
    ([{"name": "final-number", "tolerence": 1}], r"verifier 'final-number': tolerence: unknown key "
                                                 r"\(did you mean 'tolerance'\?\)"),
    ([{"name": "final-number", "threshold": 2}], r"threshold 2 is not a number from 0 to 1"),
    ([{"tolerance": 1}], r"each verifier is a mapping with a `name`"),
    ([], r"at least 1 item"),
])
def test_bad_verifiers_are_refused_saying_why(folder, verifiers, message):
    with pytest.raises(ValidationError, match=message):
        params(folder, verifiers)


def test_a_bad_source_is_refused_saying_why(folder):
    with pytest.raises(ValidationError, match=r"file not found \(looked for .*missing\.jsonl"):
        params(folder, path="missing.jsonl")
    with pytest.raises(ValidationError, match=r"unknown prompt source 'jsnl' \(did you mean 'jsonl'\?\)"):
        CustomParams.model_validate({"source": {"source": "jsnl"}, "verifiers": [{"name": "final-number"}]})
    with pytest.raises(ValidationError, match=r"needs a `source` key"):
        CustomParams.model_validate({"source": {"path": "x.jsonl"}, "verifiers": [{"name": "final-number"}]})
    with pytest.raises(ValidationError, match=r"limt: unknown key"):
        params(folder, limt=3)
    with pytest.raises(ValidationError, match="extra"):
        CustomParams.model_validate({"source": {"source": "arithmetic", "count": 3},
                                     "verifiers": [{"name": "final-number"}], "verifier": []})


def test_model_running_verifiers_are_left_out_and_alone_refused(folder):
    judge = f"{__name__}:always_wrong"
    try:
        assert VERIFIERS.get(judge).uses_model
        mixed = params(folder, [{"name": "final-number"}, {"name": judge}])
        items = PROBE.load(mixed, None, 0).items
        assert PROBE.score(items[:1], [["4"]], mixed)[0]["accuracy"] == Ratio(1, 1)  # the judge did not run
        with pytest.raises(ValidationError, match="runs a model, which probes do not support yet"):
            params(folder, [{"name": judge}])
    finally:
        VERIFIERS.reset_plugins()


def test_a_generated_source_and_the_limit(folder):
    p = CustomParams.model_validate({"source": {"source": "arithmetic", "count": 12, "seed": 3},
                                     "verifiers": [{"name": "final-number"}]})
    a = PROBE.load(p, 5, 1)
    assert a.total == 12 and len(a.items) == 5 and a.licence == "apache-2.0" and a.source == "arithmetic"
    assert [i.id for i in a.items] == [i.id for i in PROBE.load(p, 5, 1).items]
    assert [i.id for i in a.items] != [i.id for i in PROBE.load(p, 5, 2).items]
    answers = [[i.data["reference"]] for i in a.items]
    assert [r["accuracy"] for r in PROBE.score(a.items, answers, p)] == [Ratio(1, 1)] * 5


def test_the_probes_are_registered_with_their_params():
    from distill.probes import PROBES
    from distill.probes.humaneval import HumanevalParams, HumanevalProbe
    from distill.probes.ifbench import IfbenchParams, IfbenchProbe
    from distill.probes.tools import BfclProbe, BfclProbeParams

    for name, cls, params_cls in [("custom", CustomProbe, CustomParams), ("ifbench", IfbenchProbe, IfbenchParams),
                                  ("humaneval", HumanevalProbe, HumanevalParams), ("bfcl", BfclProbe, BfclProbeParams)]:
        entry = PROBES.get(name)
        assert isinstance(entry.fn, cls) and entry.params is params_cls and entry.summary
