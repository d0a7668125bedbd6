"""The bfcl prompt source: BFCL's single-turn tests as conversation prompts with BFCL's ground truth."""

from __future__ import annotations

import importlib.util
import json

import pytest
from jsonschema import Draft202012Validator

from distill.prompts import bfcl, prompt_row
from distill.verifiers import VerifyContext
from distill.verifiers.tool_call import ToolCallParams, verify_tool_call

if importlib.util.find_spec("bfcl_eval") is None:
    pytest.skip("needs the bfcl-eval package (scripts/install.sh installs it)", allow_module_level=True)


def rows(**kw):
    return list(bfcl.read_bfcl(bfcl.BfclParams(**kw)))


def test_default_categories_are_the_classic_ast_sets_in_full():
    got = rows()
    counts = {c: sum(r["category"] == c for r in got) for c in bfcl.BfclParams().categories}
    assert counts == {"simple_python": 400, "multiple": 200, "parallel": 200, "parallel_multiple": 200,
                      "irrelevance": 240}


def test_every_row_is_a_valid_conversation_with_json_schema_tools():
    for r in rows(categories=list(bfcl.Category.__args__)):
        stored = prompt_row(r, r["category"])  # raises on a broken conversation
        # four live_irrelevance tests offer no function at all
        assert stored["messages"] and (stored["tools"] or r["category"] == "live_irrelevance")
        for tool in r["tools"]:
            params = tool["function"]["parameters"]
            Draft202012Validator.check_schema(params)
            assert params["type"] == "object"
            assert '"type": "dict"' not in json.dumps(params) and '"type": "float"' not in json.dumps(params)


def test_types_are_mapped_and_bfcl_only_keys_dropped():
    schema = bfcl.to_json_schema({"type": "dict", "properties": {
        "x": {"type": "float"}, "t": {"type": "tuple", "items": {"type": "integer"}},
        "v": {"type": "any", "description": "anything"}, "o": {"type": "string", "optional": True, "required": False}},
        "required": ["x"]}, "f")
    assert schema == {"type": "object", "properties": {
        "x": {"type": "number"}, "t": {"type": "array", "items": {"type": "integer"}},
        "v": {"description": "anything"}, "o": {"type": "string"}}, "required": ["x"]}
    with pytest.raises(ValueError, match=r"f\.p: unknown BFCL type 'String'"):
        bfcl.to_json_schema({"type": "dict", "properties": {"p": {"type": "String"}}}, "f")


def test_references_hold_ground_truth_and_irrelevance_expects_no_call():
    got = rows(categories=["simple_python", "irrelevance", "live_relevance"], limit_per_category=5)
    by_cat = {}
    for r in got:
        by_cat.setdefault(r["category"], []).append(json.loads(r["reference"]))
    assert all(ref["ground_truth"] for ref in by_cat["simple_python"])
    assert all(ref == {"ground_truth": []} for ref in by_cat["irrelevance"])
    assert all(set(ref) == {"tools"} for ref in by_cat["live_relevance"])


def test_limit_per_category_draws_the_same_tests_for_a_seed_and_others_for_another():
    a = [r["question"] for r in rows(categories=["multiple"], limit_per_category=10, seed=0)]
    b = [r["question"] for r in rows(categories=["multiple"], limit_per_category=10, seed=0)]
    c = [r["question"] for r in rows(categories=["multiple"], limit_per_category=10, seed=1)]
    assert a == b and len(a) == 10 and a != c


def test_a_system_prompt_goes_first():
    r = rows(categories=["simple_python"], limit_per_category=1, system_prompt="Call tools.")[0]
    assert r["messages"][0] == {"role": "system", "content": "Call tools."}
    assert r["messages"][-1]["role"] == "user" and r["question"] == r["messages"][-1]["content"]


def test_the_ground_truth_scores_through_the_verifier_with_the_prompt_tools():
    got = rows(categories=["parallel", "irrelevance"], limit_per_category=3)
    completions = []
    for r in got:
        truth = json.loads(r["reference"])["ground_truth"]
        calls = [{"name": n, "arguments": {k: next(v for v in vs if v != "") for k, vs in a.items()
                                             if any(v != "" for v in vs)}} for c in truth for n, a in c.items()]
        completions.append("\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls) or "I can't do that.")
    ctx = VerifyContext(questions=[None] * len(got), finish_reasons=[None] * len(got), tools=[r["tools"] for r in got])
    verdicts = verify_tool_call(completions, [r["reference"] for r in got], ToolCallParams(), ctx)
    assert [v.score for v in verdicts] == [1.0] * len(got), [v.reason for v in verdicts]
    # the same calls against the wrong tools fail their schema
    wrong = VerifyContext(questions=[None] * 3, finish_reasons=[None] * 3, tools=[got[-1]["tools"]] * 3)
    assert [v.score for v in verify_tool_call(completions[:3], [r["reference"] for r in got[:3]],
                                              ToolCallParams(), wrong)] == [0.0] * 3


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(bfcl.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r'pip install --no-deps "bfcl-eval==2026\.3\.23"'):
        rows()
