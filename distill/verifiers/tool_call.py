"""tool-call: the completion's tool calls parse, fit the tools' JSON Schemas and match the expected calls.

Completion formats read (`formats` can restrict them to the one a student's chat template parses):
- hermes: one or more <tool_call>{"name": ..., "arguments": {...}}</tool_call> tags (Hermes, Qwen).
  When a completion has such a tag, only the tags are read.
- openai: a list of {"type": "function", "function": {"name": ..., "arguments": ...}} or an object
  with a "tool_calls" key holding that list (an assistant message).
- json: a bare {"name": ..., "arguments": {...}} object, or a list of them.
openai and json are read from ```json (or unlabelled) fenced blocks if there are any, else from the
whole completion, else from every call-shaped JSON value embedded in prose. "arguments" may be an
object or a JSON string (OpenAI sends a string); "parameters" is read as a synonym (Llama 3.1).
A reasoning block is skipped: only the text after the last `think_close_tag` ("</think>") is read.

The reference is JSON text (the prompt row's reference is a string) holding an object:

    {"tools": [{"type": "function",
                "function": {"name": "get_weather",
                             "parameters": {"type": "object",
                                            "properties": {"city": {"type": "string"},
                                                           "days": {"type": "integer"}},
                                            "required": ["city"]}}}],
     "expected": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}]}

- tools: OpenAI tool definitions; the bare {"name", "parameters"} form is read too. Every call must
  name one of them and its arguments must validate against its "parameters" JSON Schema (a tool
  without "parameters" accepts any arguments; "integer" takes integer literals only, not 3.0). Optional.
- expected: the calls the completion should make, in either call form. Optional. Calls match
  whatever their order; arguments match exactly, key order aside and type-aware (1 and "1" differ,
  1 and 1.0 are equal, true and 1 differ; list order counts). An empty list means the right answer
  is no tool call at all (BFCL's "irrelevance" cases).
- ground_truth: instead of expected, the calls in BFCL's form, each {function name: {argument:
  [acceptable values]}}. An argument's value matches when it is one of its acceptable values:
  strings after BFCL's normalisation (case, spaces and the characters ,./-_*^ ignored), numbers
  type-aware as above, lists item by item, objects key by key against {key: [acceptable values]};
  an argument whose list holds "" may be left out, and an argument not listed must not be given.
  An empty list means no call is right (BFCL's irrelevance rows).
- Other keys are errors, so a typo ("expect") is not silently a validation-only check.
Without tools in the reference, the tools the prompt was sent with (its `tools` column) are used.
A Python-literal reference ({'tools': ...}) is read too: that is what a prompt file's object field
becomes when the prompt source turns it into a string.

Score: 0.0 if no call is found, any call fails to parse, or (with tools) any call fails its schema;
with no expected calls, 1.0 otherwise. With expected calls, a call that matches no expected call and
is not a wrong attempt at one (same name) gives 0.0 unless `allow_extra_calls`; otherwise the score
is the fraction of expected calls matched (partial credit), or 0/1 with `require_all`.
None when there is no reference, the reference is invalid (including an expected call that fails
its own tool's schema), or it has neither tools nor expected calls.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Literal

from jsonschema import Draft202012Validator, SchemaError
from jsonschema.validators import extend, validator_for
from pydantic import Field

from distill.registry import Params
from distill.verifiers import VERIFIERS, Verdict, VerifyContext, parse_reference

Format = Literal["openai", "hermes", "json"]
_HERMES = re.compile(r"<tool_call>(.*?)(</tool_call>|\Z)", re.DOTALL)
# The language is captured so a ```python block is consumed whole, not mistaken for a JSON one.
_FENCE = re.compile(r"```([\w+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CALL_START = re.compile(r'(?:\[\s*)?\{\s*"(?:name|function|tool_calls|type)"')
_REFERENCE_KEYS = ("tools", "expected", "ground_truth")
_BFCL_IGNORED = re.compile(r"[ ,./\-_*^]")


class ToolCallParams(Params):
    # False: the score is the fraction of expected calls matched, usable as a reward; the
    # verifier's threshold (1.0 by default) still accepts only complete matches.
    require_all: bool = False
    # False: an extra call is an action the task did not ask for (a booking, a deletion).
    allow_extra_calls: bool = False
    # All three: restrict to the format the student's chat template will parse.
    formats: list[Format] = Field(["openai", "hermes", "json"], min_length=1)
    # Text up to this tag is not read: calls drafted while reasoning are not calls. None: read it all.
    think_close_tag: str | None = Field("</think>", min_length=1)


class CallError(ValueError):
    """Why a tool call could not be read; the message is the verdict's reason."""


def _decode(text: str, where: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CallError(f"malformed JSON in {where} at line {e.lineno} column {e.colno}: {e.msg}") from None


def _arguments(raw, where: str) -> dict:
    args = _decode(raw, f"arguments of {where}") if isinstance(raw, str) else raw
    if args is None:
        return {}
    if not isinstance(args, dict):
        raise CallError(f"arguments of {where} must be an object, got {_json_type(args)}")
    return args


def _calls(value, where: str) -> list[tuple[str, dict, Format]]:
    """(name, arguments, format) of each call in a decoded JSON value."""
    if isinstance(value, list):
        return [c for i, item in enumerate(value, 1) for c in _calls(item, f"{where} item {i}")]
    if not isinstance(value, dict):
        raise CallError(f"{where} is a JSON {_json_type(value)}, not a tool call")
    if "tool_calls" in value:
        if not isinstance(value["tool_calls"], list):
            raise CallError(f"{where}: tool_calls must be a list")
        return [(n, a, "openai") for n, a, _ in _calls(value["tool_calls"], f"{where} tool_calls")]
    if isinstance(value.get("function"), dict):
        value, fmt = value["function"], "openai"
    else:
        fmt = "json"
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise CallError(f"{where} has no function name (keys: {', '.join(value) or 'none'})")
    raw = value["arguments"] if "arguments" in value else value.get("parameters")
    return [(name, _arguments(raw, f"{where} ({name!r})"), fmt)]


def _embedded(text: str) -> list:
    """Every call-shaped JSON value in prose; the first that does not decode is an error."""
    decoder, values, end = json.JSONDecoder(), [], 0
    for match in _CALL_START.finditer(text):
        if match.start() < end:  # inside a value already read
            continue
        try:
            value, end = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError as e:
            raise CallError(f"malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        values.append(value)
    return values


def parse_tool_calls(text: str) -> list[tuple[str, dict, Format]]:
    """Every tool call in a completion; raises CallError saying what could not be read."""
    if "<tool_call>" in text:
        calls = []
        for i, (block, close) in enumerate(_HERMES.findall(text), 1):
            if not close:  # generation stopped inside the tag
                raise CallError(f"<tool_call> {i} is not closed")
            where = f"<tool_call> {i}"
            calls += [(n, a, "hermes") for n, a, _ in _calls(_decode(block.strip(), where), where)]
        return calls
    fences = [body for lang, body in _FENCE.findall(text) if lang.lower() in ("", "json")]
    if fences:
        calls = []
        for i, body in enumerate(fences, 1):
            where = f"fenced block {i}"
            calls += _calls(_decode(body.strip(), where), where)
        return calls
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:  # prose around the JSON, several objects, or a broken one
        whole = None
    if isinstance(whole, (dict, list)):  # a bare 42 or "Paris" is an answer, not a broken call
        return _calls(whole, "completion")
    return [c for i, v in enumerate(_embedded(text), 1) for c in _calls(v, f"JSON value {i}")]


def _json_type(value) -> str:
    for py, name in ((bool, "boolean"), (int, "integer"), (float, "number"), (str, "string"),
                     (list, "array"), (dict, "object"), (type(None), "null")):
        if isinstance(value, py):
            return name
    return type(value).__name__


def _same(a, b) -> bool:
    """JSON equality: 1 == 1.0, but true != 1 and 1 != "1"; object key order ignored."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


def _standard(text: str) -> str:
    """A string as BFCL compares it: lower case, without spaces and ,./-_*^, ' read as "."""
    return _BFCL_IGNORED.sub("", text).lower().replace("'", '"')


def _one_of(value, accepted: list) -> bool:
    """value matches one of the acceptable values (BFCL ground truth): see the module docstring."""
    return any(_fits(value, a) for a in accepted)


def _fits(value, accepted) -> bool:
    if isinstance(value, str) and isinstance(accepted, str):
        return _standard(value) == _standard(accepted)
    if isinstance(value, dict) and isinstance(accepted, dict):  # {key: [acceptable values]}
        if any(k not in accepted for k in value):
            return False
        # a nested value BFCL wrote without a list of alternatives is the one acceptable value
        alternatives = {k: a if isinstance(a, list) else [a] for k, a in accepted.items()}
        return all(_one_of(value[k], alternatives[k]) if k in value else "" in alternatives[k] for k in accepted)
    if isinstance(value, list) and isinstance(accepted, list):
        return len(value) == len(accepted) and all(map(_fits, value, accepted))
    return _same(value, accepted)


def _authoritative(value, accepted: list) -> bool:
    """value is one of the acceptable values and of the same JSON type (5.0 is not 5 here): the
    ground truth then overrides what the schema says of it."""
    return any(_fits(value, a) and _json_type(value) == _json_type(a) for a in accepted)


class Expected:
    """One call the completion should make: exact arguments, or BFCL's acceptable values of each."""

    def __init__(self, name: str, arguments: dict, alternatives: bool = False):
        self.name, self.arguments, self.alternatives = name, arguments, alternatives

    def matches(self, name: str, args: dict) -> bool:
        return name == self.name and not self.differences(args)

    def differences(self, got: dict) -> list[str]:
        want = self.arguments
        if not self.alternatives:
            return ([f"argument {k!r} missing" for k in want if k not in got]
                    + [f"unexpected argument {k!r}" for k in got if k not in want]
                    + [f"argument {k!r} is {json.dumps(got[k])}, expected {json.dumps(want[k])}"
                       for k in want if k in got and not _same(got[k], want[k])])
        return ([f"argument {k!r} missing" for k in want if k not in got and "" not in want[k]]
                + [f"unexpected argument {k!r}" for k in got if k not in want]
                + [f"argument {k!r} is {json.dumps(got[k])}, expected one of "
                   f"{json.dumps([a for a in want[k] if a != ''])}"
                   for k in want if k in got and not _one_of(got[k], want[k])])


def _ground_truth(value) -> list[Expected]:
    """BFCL's ground_truth list as expected calls; raises CallError naming what is malformed."""
    if not isinstance(value, list):
        raise CallError("reference ground_truth must be a list of {function: {argument: [values]}}")
    out = []
    for i, call in enumerate(value):
        if not (isinstance(call, dict) and len(call) == 1):
            raise CallError(f"reference ground_truth[{i}] must be an object with one function name")
        (name, args), = call.items()
        if not isinstance(args, dict) or not all(isinstance(v, list) for v in args.values()):
            raise CallError(f"reference ground_truth[{i}] ({name!r}): each argument needs a list of acceptable values")
        out.append(Expected(name, args, alternatives=True))
    return out


def _schema_problems(validator, args: dict) -> list[tuple[str | None, str]]:
    """Readable schema violations, each with the argument it is about (None: the whole object):
    argument 'city' missing, 'days' should be integer, ..."""
    out: list[tuple[str | None, str]] = []
    for e in sorted(validator.iter_errors(args), key=lambda e: [str(p) for p in e.absolute_path]):
        path = ".".join(str(p) for p in e.absolute_path)
        top = str(e.absolute_path[0]) if e.absolute_path else None
        at = f"argument {path!r}" if path else "arguments"
        if e.validator == "required":
            missing = [r for r in e.validator_value if isinstance(e.instance, dict) and r not in e.instance]
            msgs = [(top or m, f"argument {'.'.join(filter(None, [path, m]))!r} missing") for m in missing]
        elif e.validator == "type":
            want = e.validator_value
            want = " or ".join(want) if isinstance(want, list) else want
            msgs = [(top, f"{at} should be {want}, got {_json_type(e.instance)} {json.dumps(e.instance)}")]
        elif e.validator == "additionalProperties" and e.validator_value is False \
                and "patternProperties" not in e.schema:  # else extras cannot be told from the message
            extra = [k for k in e.instance if k not in e.schema.get("properties", {})]
            msgs = [(top or k, f"unexpected argument {'.'.join(filter(None, [path, k]))!r}") for k in extra]
        else:
            msgs = [(top, f"{at}: {e.message}")]
        out += [m for m in msgs if m not in out]
    return out


@lru_cache(maxsize=None)
def _strict_integers(cls):
    """The validator class with "integer" meaning a JSON integer literal: 5.0 is a number, as a
    Python caller (and BFCL) reads it, where JSON Schema would take it for an integer."""
    checker = cls.TYPE_CHECKER.redefine("integer", lambda _, v: isinstance(v, int) and not isinstance(v, bool))
    return extend(cls, type_checker=checker)


@lru_cache(maxsize=256)  # a dataset usually shares a few tool sets: check each schema once
def _validators(tools_json: str) -> dict:
    """{tool name: validator, or None for a tool without parameters} of a JSON list of tools."""
    tools = {}
    for i, tool in enumerate(json.loads(tools_json)):
        fn = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise CallError(f"tools[{i}] has no function name")
        schema = fn.get("parameters")
        if schema is None:
            tools[fn["name"]] = None
            continue
        cls = validator_for(schema, default=Draft202012Validator)
        try:
            cls.check_schema(schema)
        except SchemaError as e:
            raise CallError(f"schema of tool {fn['name']!r} is invalid: {e.message}") from None
        tools[fn["name"]] = _strict_integers(cls)(schema)
    return tools


@lru_cache(maxsize=256)
def _reference(text: str) -> tuple[str | None, list[Expected] | None]:
    """(the reference's tools as JSON text, expected calls); raises CallError on an invalid reference."""
    try:
        ref = parse_reference(text)
    except ValueError as e:
        raise CallError(str(e)) from None
    if not isinstance(ref, dict):
        raise CallError(f"reference is a JSON {_json_type(ref)}, not an object with tools and/or expected")
    if unknown := [k for k in ref if k not in _REFERENCE_KEYS]:
        keys = ", ".join(map(repr, unknown))
        raise CallError(f"reference has unknown key(s) {keys}; allowed: {', '.join(_REFERENCE_KEYS)}")
    if "expected" in ref and "ground_truth" in ref:
        raise CallError("reference has both expected and ground_truth; give one")
    tools_json = None
    if ref.get("tools"):
        if not isinstance(ref["tools"], list):
            raise CallError("reference tools must be a list of tool definitions")
        tools_json = json.dumps(ref["tools"], sort_keys=True)
        try:
            tools = _validators(tools_json)
        except CallError as e:
            raise CallError(f"reference {e}") from None
    expected = ref.get("expected")
    if expected is not None:
        if not isinstance(expected, list):
            raise CallError("reference expected must be a list of calls")
        expected = [Expected(n, a) for n, a, _ in _calls(expected, "reference expected")]
        for want in expected:
            if tools_json and (problems := _call_problems(tools, want.name, want.arguments)):
                why = "; ".join(problems)
                raise CallError(f"reference expected call {want.name!r} fails its tool schema: {why}")
    if "ground_truth" in ref:
        expected = _ground_truth(ref["ground_truth"])
    return tools_json, expected


def _call_problems(tools: dict | None, name: str, args: dict, expected: list[Expected] | None = None) -> list[str]:
    """What is wrong with a call against its tool's schema. With BFCL ground truth (`expected`
    with alternatives), judged as BFCL does: an argument the tool does not declare is unexpected,
    and an argument whose value is one of its acceptable values passes whatever the schema says
    of it (BFCL checks no enum, and its ground truth is authoritative where it and the schema differ)."""
    if tools is None:
        return []
    if name not in tools:
        return [f"unknown function {name!r} (tools: {', '.join(tools)})"]
    if not tools[name]:
        return []
    problems = _schema_problems(tools[name], args)
    truths = [w for w in expected or [] if w.alternatives and w.name == name]
    if truths:
        problems = [(arg, m) for arg, m in problems
                    if not (arg in args and any(arg in w.arguments and _authoritative(args[arg], w.arguments[arg])
                                                for w in truths))]
        declared = tools[name].schema.get("properties")
        if isinstance(declared, dict):
            problems += [(k, f"unexpected argument {k!r}") for k in args if k not in declared]
    return [f"{name}: {m}" for _, m in dict.fromkeys(problems)]


def _match(expected: list[Expected], calls: list[tuple]) -> tuple[int, list[str], list[tuple]]:
    """(expected calls matched, why each other one was not, calls that answer no expected call)."""
    unmatched, missed = list(calls), []
    for want in expected:  # exact matches first, so a near miss cannot take another call's match
        hit = next((c for c in unmatched if want.matches(c[0], c[1])), None)
        if hit is None:
            missed.append(want)
        else:
            unmatched.remove(hit)
    reasons = []
    for want in missed:  # a same-name call is a wrong attempt at it, not an extra call
        attempt = next((c for c in unmatched if c[0] == want.name), None)
        if attempt is None:
            reasons.append(f"expected call {want.name!r} not made")
        else:
            unmatched.remove(attempt)
            reasons.append(f"{want.name}: {', '.join(want.differences(attempt[1]))}")
    return len(expected) - len(missed), reasons, unmatched


def _verdict(completion: object, reference: object, p: ToolCallParams, sent_tools: list | None = None) -> Verdict:
    if reference is None or not str(reference).strip():
        return Verdict(None, "no reference")
    try:
        tools_json, expected = _reference(str(reference).strip())
        if tools_json is None and sent_tools:
            tools_json = json.dumps(sent_tools, sort_keys=True)
        tools = _validators(tools_json) if tools_json else None
    except CallError as e:
        return Verdict(None, str(e))
    if tools is None and expected is None:
        return Verdict(None, "reference has neither tools nor expected calls")
    text = completion if isinstance(completion, str) else str(completion or "")
    if p.think_close_tag:
        text = text.rpartition(p.think_close_tag)[2]
    try:
        calls = parse_tool_calls(text)
    except CallError as e:
        return Verdict(0.0, str(e))
    if expected == []:
        if calls:
            return Verdict(0.0, f"{len(calls)} tool call(s), expected none")
        return Verdict(1.0, "no tool call, as expected")
    if not calls:
        return Verdict(0.0, "no tool call found")
    off = [f"call {i} is in {fmt} format" for i, (_, _, fmt) in enumerate(calls, 1) if fmt not in p.formats]
    if off:
        return Verdict(0.0, f"{'; '.join(off)}; allowed: {', '.join(p.formats)}")
    problems = []
    for i, (name, args, _) in enumerate(calls, 1):
        prefix = f"call {i}: " if len(calls) > 1 else ""
        problems += [prefix + msg for msg in _call_problems(tools, name, args, expected)]
    if problems:
        return Verdict(0.0, "; ".join(problems))
    if expected is None:
        return Verdict(1.0, f"{len(calls)} call(s) valid against the tool schemas")
    matched, reasons, extra = _match(expected, calls)
    if extra and not p.allow_extra_calls:
        reasons.append(f"unexpected extra call(s) {', '.join(repr(c[0]) for c in extra)}")
        return Verdict(0.0, "; ".join(reasons))
    score = 0.0 if p.require_all and matched < len(expected) else matched / len(expected)
    return Verdict(score, "; ".join([f"{matched}/{len(expected)} expected calls matched"] + reasons))


@VERIFIERS.register(
    "tool-call",
    params=ToolCallParams,
    example="""
verifiers:
  # reference: {"tools": [...], "expected": [...]}
  - name: tool-call
    require_all: false
    allow_extra_calls: false
    formats: ["openai", "hermes", "json"]
""",
)
def verify_tool_call(
    completions: list[str], references: list[str | None], params: ToolCallParams, ctx: VerifyContext
) -> list[Verdict]:
    """The completion's tool calls parse, fit the tools' JSON Schemas and match the expected calls."""
    sent = ctx.tools or [None] * len(completions)
    return [_verdict(c, r, params, t) for c, r, t in zip(completions, references, sent, strict=True)]
