"""The bfcl probe: BFCL's single-turn tests as requests with tools, judged by the tool-call verifier."""

from __future__ import annotations

import importlib.util
import json

import pytest

from distill.probes import Ratio
from distill.probes.tools import BfclProbe, BfclProbeParams

if importlib.util.find_spec("bfcl_eval") is None:
    pytest.skip("needs the bfcl-eval package (its data files)", allow_module_level=True)

PROBE = BfclProbe()


@pytest.fixture(scope="module")
def items() -> dict:
    probe_set = PROBE.load(BfclProbeParams(), None, 0)
    return {item.data["bfcl_id"]: item for item in probe_set.items}


def as_calls(item) -> str:
    """The test's ground truth as a model writes it: one <tool_call> tag per call, each argument
    its first acceptable value (one BFCL marks optional with "" is left out)."""
    truth = json.loads(item.data["reference"])["ground_truth"]
    calls = [{"name": name, "arguments": {k: next(v for v in values if v != "") for k, values in args.items()
                                          if any(v != "" for v in values)}}
             for call in truth for name, args in call.items()]
    return "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)


def accuracy(items, ids, answers) -> list[Ratio]:
    got = PROBE.score([items[i] for i in ids], [[a] for a in answers], BfclProbeParams())
    return [r["accuracy"] for r in got]


def test_the_default_categories_in_full_with_their_package_and_licence(items):
    probe_set = PROBE.load(BfclProbeParams(), None, 0)
    assert probe_set.total == len(probe_set.items) == 840 and not probe_set.skipped
    counts = {c: sum(i.data["category"] == c for i in probe_set.items) for c in ("simple_python", "multiple",
                                                                                "irrelevance")}
    assert counts == {"simple_python": 400, "multiple": 200, "irrelevance": 240}
    assert probe_set.source.startswith("bfcl-eval ") and probe_set.licence == "apache-2.0"
    assert PROBE.metrics == {"accuracy": "higher"} and PROBE.max_tokens == 512
    assert len({i.id for i in probe_set.items}) == 840
    (request,) = items["simple_python_0"].requests
    assert request["messages"][-1]["role"] == "user" and "triangle" in request["messages"][-1]["content"]
    assert request["tools"][0]["function"]["name"] == "calculate_triangle_area"
    assert request["tools"][0]["function"]["parameters"]["type"] == "object"


def test_the_ground_truth_call_passes(items):
    ids = ["simple_python_0", "simple_python_1", "simple_python_2", "multiple_0", "multiple_1"]
    assert accuracy(items, ids, [as_calls(items[i]) for i in ids]) == [Ratio(1.0, 1)] * len(ids)
    # the same call in OpenAI's form, as an API's tool_calls list
    truth = json.loads(items["simple_python_0"].data["reference"])["ground_truth"][0]
    (name, args), = truth.items()
    openai = json.dumps([{"type": "function", "function": {"name": name, "arguments": json.dumps(
        {k: v[0] for k, v in args.items() if v[0] != ""})}}])
    assert accuracy(items, ["simple_python_0"], [openai]) == [Ratio(1.0, 1)]


def test_a_wrong_call_fails(items):
    right = json.loads(as_calls(items["simple_python_0"]).split("\n")[1])
    wrong_value = {**right, "arguments": {**right["arguments"], "base": right["arguments"]["base"] + 1}}
    wrong_name = {**right, "name": "calculate_circle_area"}
    answers = [f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in (wrong_value, wrong_name)]
    answers += ["The area is 25.", None]  # no call; a failed request
    assert accuracy(items, ["simple_python_0"] * 4, answers) == [Ratio(0.0, 1)] * 3 + [Ratio(0, 1)]


def test_irrelevance_is_right_only_without_a_call(items):
    item = items["irrelevance_0"]
    tool = item.requests[0]["tools"][0]["function"]
    some_call = f'<tool_call>\n{{"name": "{tool["name"]}", "arguments": {{}}}}\n</tool_call>'
    assert accuracy(items, ["irrelevance_0"] * 2, ["None of these functions can answer that.", some_call]) == [
        Ratio(1.0, 1), Ratio(0.0, 1)]


def test_a_parallel_test_half_done_fails():
    probe_set = PROBE.load(BfclProbeParams(categories=["parallel"]), None, 0)
    item = next(i for i in probe_set.items if len(json.loads(i.data["reference"])["ground_truth"]) == 2)
    both = as_calls(item)
    first = both.split("</tool_call>")[0] + "</tool_call>"
    got = PROBE.score([item, item], [[both], [first]], BfclProbeParams())
    assert [r["accuracy"] for r in got] == [Ratio(1.0, 1), Ratio(0.0, 1)]


def test_the_limit_draws_a_seeded_stable_subset():
    a = [i.id for i in PROBE.load(BfclProbeParams(), 30, 4).items]
    assert len(a) == 30 and a == [i.id for i in PROBE.load(BfclProbeParams(), 30, 4).items]
    assert a != [i.id for i in PROBE.load(BfclProbeParams(), 30, 5).items]


def test_params_name_bfcl_categories_only():
    with pytest.raises(ValueError, match="simple_python"):
        BfclProbeParams(categories=["simple"])
    with pytest.raises(ValueError):
        BfclProbeParams(categories=[])


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    from distill.prompts import bfcl

    monkeypatch.setattr(bfcl.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r'pip install --no-deps "bfcl-eval==2026\.3\.23"'):
        PROBE.load(BfclProbeParams(), None, 0)
