import json

import pytest
from pydantic import ValidationError

from distill.verifiers import VERIFIERS, VerifyContext
from distill.verifiers.tool_call import ToolCallParams, verify_tool_call

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Forecast for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer", "minimum": 1},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}}}
TOOLS = [WEATHER, TIME]
PARIS = {"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}
ROME = {"name": "get_weather", "arguments": {"city": "Rome", "days": 1}}
UTC = {"name": "get_time", "arguments": {"tz": "UTC"}}


def ref(tools=TOOLS, expected=None) -> str:
    body = {"tools": tools} if tools is not None else {}
    if expected is not None:
        body["expected"] = expected
    return json.dumps(body)


def hermes(*calls) -> str:
    return "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)


def openai(*calls, args_as_string=True) -> list:
    return [{"id": f"call_{i}", "type": "function",
             "function": {"name": c["name"],
                          "arguments": json.dumps(c["arguments"]) if args_as_string else c["arguments"]}}
            for i, c in enumerate(calls)]


def verdict(completion, reference, **params):
    [v] = verify_tool_call([completion], [reference], ToolCallParams(**params), VerifyContext.blank(1))
    return v


@pytest.mark.parametrize(
    "completion, reference, expected",
    [
        # Each format, matching the expected call.
        (hermes(PARIS), ref(expected=[PARIS]), 1.0),
        (json.dumps(openai(PARIS)), ref(expected=[PARIS]), 1.0),
        (json.dumps(openai(PARIS, args_as_string=False)), ref(expected=[PARIS]), 1.0),
        (json.dumps({"role": "assistant", "content": None, "tool_calls": openai(PARIS)}), ref(expected=[PARIS]), 1.0),
        (json.dumps(PARIS), ref(expected=[PARIS]), 1.0),
        (f"Let me check.\n```json\n{json.dumps(PARIS)}\n```", ref(expected=[PARIS]), 1.0),
        (f"I will call {json.dumps(PARIS)} now.", ref(expected=[PARIS]), 1.0),
        (json.dumps({"name": "get_weather", "parameters": {"city": "Paris", "days": 3}}), ref(expected=[PARIS]), 1.0),
        # A ```python block is skipped, the ```json one read.
        (f"```python\nprint(1)\n```\n```json\n{json.dumps(PARIS)}\n```", ref(expected=[PARIS]), 1.0),
        # Argument and key order do not matter; 3 and 3.0 are the same JSON number, but a tool
        # declaring an integer gets a float from 3.0 (as a Python caller and BFCL read it).
        ('<tool_call>{"arguments": {"days": 3, "city": "Paris"}, "name": "get_weather"}</tool_call>',
         ref(expected=[PARIS]), 1.0),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "days": 3.0}}), ref(None, expected=[PARIS]), 1.0),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "days": 3.0}}), ref(expected=[PARIS]), 0.0),
        # Several calls, in any order; partial credit for the fraction matched.
        (hermes(UTC, PARIS), ref(expected=[PARIS, UTC]), 1.0),
        (json.dumps(openai(ROME, PARIS)), ref(expected=[PARIS, ROME]), 1.0),
        (hermes(PARIS), ref(expected=[PARIS, UTC]), 0.5),
        (hermes(PARIS, {"name": "get_time", "arguments": {"tz": "CET"}}), ref(expected=[PARIS, UTC]), 0.5),
        (hermes(PARIS, PARIS), ref(expected=[PARIS, PARIS]), 1.0),
        (hermes(PARIS, UTC), ref(expected=[PARIS]), 0.0),  # extra call not allowed by default
        # Wrong values against the expected call.
        (hermes({"name": "get_weather", "arguments": {"city": "Rome", "days": 3}}), ref(expected=[PARIS]), 0.0),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris"}}), ref(expected=[PARIS]), 0.0),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "days": 3, "unit": "celsius"}}),
         ref(expected=[PARIS]), 0.0),
        (hermes(UTC), ref(expected=[PARIS]), 0.0),
        # Schema violations, with or without expected calls.
        (hermes(PARIS), ref(), 1.0),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}}), ref(), 0.0),  # "3" is no integer
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "days": True}}), ref(), 0.0),
        (hermes({"name": "get_weather", "arguments": {"days": 3}}), ref(), 0.0),  # city missing
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "when": "now"}}), ref(), 0.0),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "days": 0}}), ref(), 0.0),  # minimum 1
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}), ref(), 0.0),
        (hermes({"name": "get_wether", "arguments": {"city": "Paris"}}), ref(), 0.0),
        (hermes({"name": "get_time", "arguments": {"tz": "UTC", "extra": 1}}), ref(), 1.0),  # its schema allows extras
        # Unparsable or absent calls.
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris",}}</tool_call>', ref(), 0.0),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Par', ref(), 0.0),  # truncated
        ('{"name": "get_weather", "arguments": {"city": "Paris"}', ref(), 0.0),
        (json.dumps(openai(PARIS))[:-3], ref(), 0.0),
        (json.dumps({"type": "function", "function": {"name": "get_weather", "arguments": "{city: Paris}"}}), ref(), 0.0),
        (json.dumps({"name": "get_weather", "arguments": ["Paris"]}), ref(), 0.0),
        ("The weather in Paris is sunny.", ref(), 0.0),
        ("42", ref(expected=[PARIS]), 0.0),
        ("", ref(), 0.0),
        # expected: [] means the right answer calls no tool.
        ("I cannot look that up.", ref(expected=[]), 1.0),
        (hermes(PARIS), ref(expected=[]), 0.0),
        # Without tools, only the expected calls are checked.
        (hermes(PARIS), ref(tools=None, expected=[PARIS]), 1.0),
        (hermes({"name": "anything", "arguments": {"x": 1}}), ref(tools=None, expected=[PARIS]), 0.0),
        # Cannot verify: no usable reference.
        (hermes(PARIS), None, None),
        (hermes(PARIS), "", None),
        (hermes(PARIS), "{}", None),
        (hermes(PARIS), ref(tools=[]), None),
        (hermes(PARIS), "get_weather", None),
        (hermes(PARIS), '["get_weather"]', None),
        (hermes(PARIS), json.dumps({"tools": TOOLS, "expect": [PARIS]}), None),  # typo'd key
        (hermes(PARIS), ref(expected=[{"name": "get_weather", "arguments": {"days": 2}}]), None),  # bad reference
        (hermes(PARIS), ref(tools=[{"name": "f", "parameters": {"type": "nonsense"}}]), None),
        (hermes(PARIS), str({"tools": TOOLS, "expected": [PARIS]}), 1.0),  # Python repr of a dict
    ],
)
def test_tool_call_table(completion, reference, expected):
    assert verdict(completion, reference).score == expected


@pytest.mark.parametrize(
    "completion, reference, reason",
    [
        (hermes({"name": "get_wether", "arguments": {}}), ref(),
         "unknown function 'get_wether' (tools: get_weather, get_time)"),
        (hermes({"name": "get_weather", "arguments": {"days": 3}}), ref(), "get_weather: argument 'city' missing"),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "days": "3"}}), ref(),
         "get_weather: argument 'days' should be integer, got string \"3\""),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "when": "now"}}), ref(),
         "get_weather: unexpected argument 'when'"),
        (hermes(UTC, {"name": "get_weather", "arguments": {"city": 7}}), ref(),
         "call 2: get_weather: argument 'city' should be string, got integer 7"),
        ('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris",}}</tool_call>', ref(),
         "malformed JSON in <tool_call> 1 at line 1 column 55: Expecting property name enclosed in double quotes"),
        ('<tool_call>{"name": "get_weather"}</tool_call><tool_call>{"name": "get_', ref(), "<tool_call> 2 is not closed"),
        ('Calling {"name": "get_weather", "arguments": {"city": "Paris"}', ref(),
         "malformed JSON at line 1 column 63: Expecting ',' delimiter"),
        ("It is sunny.", ref(), "no tool call found"),
        (hermes({"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}), ref(expected=[PARIS]),
         "0/1 expected calls matched; get_weather: argument 'days' is 2, expected 3"),
        (hermes(PARIS), ref(expected=[PARIS, UTC]), "1/2 expected calls matched; expected call 'get_time' not made"),
        (hermes(PARIS, UTC), ref(expected=[PARIS]), "unexpected extra call(s) 'get_time'"),
        (hermes(PARIS), ref(expected=[PARIS]), "1/1 expected calls matched"),
        (hermes(PARIS), None, "no reference"),
        (hermes(PARIS), "{}", "reference has neither tools nor expected calls"),
        (hermes(PARIS), json.dumps({"expect": []}), "reference has unknown key(s) 'expect'; allowed: tools, expected, ground_truth"),
        (hermes(PARIS), ref(expected=[]), "1 tool call(s), expected none"),
    ],
)
def test_tool_call_reasons(completion, reference, reason):
    assert verdict(completion, reference).reason == reason


@pytest.mark.parametrize(
    "completion, reference, params, expected",
    [
        (hermes(PARIS), ref(expected=[PARIS, UTC]), {"require_all": True}, 0.0),
        (hermes(PARIS, UTC), ref(expected=[PARIS, UTC]), {"require_all": True}, 1.0),
        (hermes(PARIS, UTC), ref(expected=[PARIS]), {"allow_extra_calls": True}, 1.0),
        (hermes(PARIS), ref(expected=[PARIS]), {"formats": ["openai"]}, 0.0),
        (json.dumps(openai(PARIS)), ref(expected=[PARIS]), {"formats": ["openai"]}, 1.0),
        (json.dumps(PARIS), ref(expected=[PARIS]), {"formats": ["hermes", "openai"]}, 0.0),
        # A call drafted in the reasoning block is not a call.
        (f"<think>Maybe {json.dumps(UTC)}? No.</think>{json.dumps(PARIS)}", ref(expected=[PARIS]), {}, 1.0),
        (f"<think>Maybe {json.dumps(UTC)}? No.</think>{json.dumps(PARIS)}", ref(expected=[PARIS]),
         {"think_close_tag": None}, 0.0),
        (f"<think>I call {hermes(PARIS)}</think>It is sunny.", ref(expected=[PARIS]), {}, 0.0),
    ],
)
def test_tool_call_params(completion, reference, params, expected):
    assert verdict(completion, reference, **params).score == expected


def test_tool_call_batch_keeps_order():
    verdicts = verify_tool_call([hermes(PARIS), "no call", hermes(PARIS)],
                                [ref(expected=[PARIS]), ref(), None], ToolCallParams(), VerifyContext.blank(3))
    assert [v.score for v in verdicts] == [1.0, 0.0, None]


def test_tool_call_registered_with_params():
    entry = VERIFIERS.get("tool-call")  # the documented example is checked for every verifier in test_registered.py
    assert entry.fn is verify_tool_call and entry.params is ToolCallParams
    with pytest.raises(ValidationError):
        ToolCallParams(require_al=True)
    with pytest.raises(ValidationError):
        ToolCallParams(formats=["xml"])
    with pytest.raises(ValidationError):
        ToolCallParams(formats=[])


# BFCL's ground-truth form: {function: {argument: [acceptable values]}}, "" = may be left out.
AREA_TOOLS = [{"type": "function", "function": {"name": "area", "parameters": {
    "type": "object", "properties": {"base": {"type": "integer"}, "unit": {"type": "string", "enum": ["cm", "m"]},
                                     "scale": {"type": "number"}, "tags": {"type": "array", "items": {"type": "string"}},
                                     "opts": {"type": "object"}},
    "required": ["base"]}}}]
AREA_TRUTH = [{"area": {"base": [10], "unit": ["cm", "centimetres", ""], "scale": [1.5, ""],
                        "tags": [["Red Sea", "x"], ""], "opts": [{"mode": ["fast", "quick"], "depth": [2, ""]}, ""]}}]


@pytest.mark.parametrize(
    "arguments, score, reason",
    [
        ({"base": 10}, 1.0, None),
        ({"base": 10, "unit": "cm", "scale": 1.5}, 1.0, None),
        ({"base": 10, "unit": "CENTIMETRES"}, 1.0, None),  # case is normalised; the ground truth overrides the enum
        ({"base": 10, "tags": ["red sea", "X"]}, 1.0, None),  # lists item by item, strings normalised
        ({"base": 10, "tags": ["redsea", "x"]}, 1.0, None),  # spaces are ignored, as BFCL does
        ({"base": 10, "opts": {"mode": "Quick"}}, 1.0, None),  # objects key by key; "depth" may be left out
        ({"base": 10, "opts": {"mode": "fast", "depth": 3}}, 0.0, "argument 'opts' is"),
        ({"base": 10, "opts": {"mode": "fast", "other": 1}}, 0.0, "argument 'opts' is"),
        ({"base": 10, "tags": ["x", "red sea"]}, 0.0, "argument 'tags' is"),
        ({"base": 10, "scale": 2}, 0.0, "argument 'scale' is 2, expected one of [1.5]"),
        ({"base": 10.0}, 0.0, "argument 'base' should be integer, got number 10.0"),
        ({"base": 11}, 0.0, "argument 'base' is 11, expected one of [10]"),
        ({"unit": "cm"}, 0.0, "argument 'base' missing"),
        ({"base": 10, "unit": "mm"}, 0.0, "'mm' is not one of ['cm', 'm']"),  # neither acceptable nor in the enum
        ({"base": 10, "colour": "red"}, 0.0, "unexpected argument 'colour'"),
    ],
)
def test_ground_truth_is_judged_by_bfcl_rules(arguments, score, reason):
    completion = hermes({"name": "area", "arguments": arguments})
    ctx = VerifyContext(questions=[None], finish_reasons=[None], tools=[AREA_TOOLS])
    (v,) = verify_tool_call([completion], [json.dumps({"ground_truth": AREA_TRUTH})], ToolCallParams(), ctx)
    assert v.score == score, v.reason
    if reason:
        assert reason in v.reason


def test_ground_truth_parallel_calls_match_in_any_order_and_count_exactly():
    truth = [{"area": {"base": [1]}}, {"area": {"base": [2]}}]
    ctx = VerifyContext(questions=[None] * 3, finish_reasons=[None] * 3, tools=[AREA_TOOLS] * 3)
    two = hermes({"name": "area", "arguments": {"base": 2}}, {"name": "area", "arguments": {"base": 1}})
    one = hermes({"name": "area", "arguments": {"base": 2}})
    three = two + "\n" + one
    got = verify_tool_call([two, one, three], [json.dumps({"ground_truth": truth})] * 3, ToolCallParams(), ctx)
    assert [v.score for v in got] == [1.0, 0.5, 0.0]


def test_empty_ground_truth_means_no_call_and_malformed_ground_truth_is_no_verdict():
    ctx = VerifyContext.blank(4)
    refs = [json.dumps({"ground_truth": []})] * 2 + [json.dumps({"ground_truth": {"area": {}}}),
                                                     json.dumps({"ground_truth": [{"area": {"base": 10}}]})]
    got = verify_tool_call(["No tool fits.", hermes({"name": "area", "arguments": {"base": 1}}), "x", "y"],
                           refs, ToolCallParams(), ctx)
    assert [v.score for v in got] == [1.0, 0.0, None, None]
    assert "must be a list" in got[2].reason and "list of acceptable values" in got[3].reason


def test_the_tools_the_prompt_was_sent_with_check_calls_when_the_reference_has_none():
    reference = json.dumps({"expected": [{"name": "area", "arguments": {"base": 10.0}}]})
    completion = hermes({"name": "area", "arguments": {"base": 10.0}})
    without = verify_tool_call([completion], [reference], ToolCallParams(), VerifyContext.blank(1))
    with_tools = verify_tool_call([completion], [reference], ToolCallParams(),
                                  VerifyContext(questions=[None], finish_reasons=[None], tools=[AREA_TOOLS]))
    assert without[0].score == 1.0
    assert with_tools[0].score == 0.0 and "should be integer" in with_tools[0].reason
