"""tool-tasks: seeded tool-use conversations with the exact calls that answer them.

Each task is a conversation ending in a user request, the OpenAI function definitions offered
with it (shuffled), and a reference for the `tool-call` verifier: the offered tools and the
calls expected, `{"tools": [...], "expected": [{"name": ..., "arguments": {...}}]}`, self-contained
so the verifier checks the calls against the schemas without anything else. Categories:
- single: one tool offered, one call;
- multiple: several tools offered (related ones first), one right call;
- parallel: one request needing 2-3 calls, of the same tool or different ones;
- no_call: the request fits none of the offered tools (another family's request, or chit-chat);
  the right answer is a reply, `expected: []`. No tool of an overlapping or general family
  (web search) is offered.
Every value a call needs is written in the request as the call has it (a boolean the wording
implies aside), and an optional argument is in the call only when the request mentions it: a
small teacher can copy its way to a right call. With `multi_turn`, a share of conversations
first holds a finished exchange (request, call, tool result, answer) with one of the offered
tools, about other values than the request (another city, another date). Families, functions, request templates and
value pools are data: distill/prompts/tool_tasks.yaml. Tasks are distinct by content (turns and
the set of tools offered).
"""

from __future__ import annotations

import copy
import json
import random
import re
from datetime import date, timedelta
from functools import lru_cache
from typing import Annotated, Iterable, Literal, get_args

import yaml
from pydantic import Field, field_validator, model_validator

from distill.prompts import HERE, PROMPT_SOURCES
from distill.registry import Params, closest

Category = Literal["single", "multiple", "parallel", "no_call"]
CATEGORIES: tuple[str, ...] = get_args(Category)
DEFAULT_SYSTEM_PROMPT = ("You are a helpful assistant with access to tools. When a tool can do what the user "
                         "asks, call it with the values the user gave; otherwise reply in plain text.")
CHAT = "chat"  # the family of a no_call row whose request is chit-chat
TOKEN = re.compile(r"\{(\w+(?:\*\w+)?)\}")  # {city}, {city_2}; in results also {a*b}
NUMBERED = re.compile(r"(\w+)_(\d)")


class Redraw(Exception):
    """This attempt cannot make a good task (a pool has no unused value left, or the earlier
    exchange already made the call asked for): it is dropped and another drawn."""


@lru_cache(maxsize=1)
def catalogue() -> dict:
    """The YAML, with every function also indexed by name (its family stamped on it)."""
    data = yaml.safe_load((HERE / "tool_tasks.yaml").read_text())
    data["functions"] = {}
    for family, spec in data["families"].items():
        spec.setdefault("overlaps", [])
        for name, fn in spec["functions"].items():
            data["functions"][name] = {**fn, "name": name, "family": family}
    for family, spec in data["families"].items():  # an overlap runs both ways
        for other in spec["overlaps"]:
            data["families"][other].setdefault("overlaps", [])
            if family not in data["families"][other]["overlaps"]:
                data["families"][other]["overlaps"].append(family)
    return data


def _parallel_templates(families: list[str]) -> list[dict]:
    """The parallel templates whose calls all use functions of the selected families."""
    cat = catalogue()
    out = []
    for family in families:
        for t in cat["families"][family].get("parallel", []):
            if all(cat["functions"][f]["family"] in families for f in t["calls"]):
                out.append({**t, "family": family})
    return out


class ToolTasksParams(Params):
    count: int = Field(ge=1, le=1_000_000)
    seed: int = 0
    # Default: every family in tool_tasks.yaml. Offered tools and requests come from these only.
    families: list[str] = Field(default_factory=lambda: list(catalogue()["families"]), min_length=1)
    # Share of each category; weights, normalised. A category left out gets none.
    mix: dict[Category, Annotated[float, Field(ge=0)]] = Field(
        default_factory=lambda: {"single": 0.35, "multiple": 0.3, "parallel": 0.15, "no_call": 0.2})
    # [min, max] tools offered in a multiple, parallel or no_call row (at least those the calls
    # need and 2 in a multiple row, at most as many as fit); a single row offers one.
    tools_offered: tuple[int, int] = (2, 4)
    # Share of conversations with an earlier finished exchange before the request to answer.
    multi_turn: float = Field(0.0, ge=0, le=1)
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT  # None: no system turn
    licence: str = "apache-2.0"  # generated here, under the project's own licence

    @field_validator("families")
    @classmethod
    def _known_families(cls, v: list[str]) -> list[str]:
        known = list(catalogue()["families"])
        if unknown := [f for f in v if f not in known]:
            hints = [f"{f!r} (did you mean {closest(f, known)!r}?)" if closest(f, known) else repr(f) for f in unknown]
            raise ValueError(f"unknown tool famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(hints)}; "
                             f"known: {', '.join(known)}")
        return list(dict.fromkeys(v))

    @field_validator("mix")
    @classmethod
    def _some_weight(cls, v: dict) -> dict:
        if not v or sum(v.values()) <= 0:
            raise ValueError(f"give at least one category a weight above 0 (categories: {', '.join(CATEGORIES)})")
        return v

    @field_validator("tools_offered")
    @classmethod
    def _offered_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= v[0] <= v[1] <= 10:
            raise ValueError(f"{list(v)} is not a range [min, max] with 1 <= min <= max <= 10")
        return v

    @model_validator(mode="after")
    def _categories_possible(self) -> ToolTasksParams:
        cat = catalogue()
        if self.mix.get("parallel", 0) > 0 and not _parallel_templates(self.families):
            with_parallel = [f for f in cat["families"] if cat["families"][f].get("parallel")]
            raise ValueError(f"mix.parallel: the families {', '.join(self.families)} have no parallel requests; "
                             f"add one of {', '.join(with_parallel)} or set mix.parallel to 0")
        n_functions = sum(len(cat["families"][f]["functions"]) for f in self.families)
        if self.mix.get("multiple", 0) > 0 and n_functions < 2:
            raise ValueError(f"mix.multiple: the families {', '.join(self.families)} have one function; "
                             "add a family or set mix.multiple to 0")
        if self.mix.get("no_call", 0) > 0 and all(cat["families"][f].get("general") for f in self.families):
            raise ValueError(f"mix.no_call: the tools of {', '.join(self.families)} serve almost any request; "
                             "add another family or set mix.no_call to 0")
        return self


def _draw(spec, rng: random.Random, used: dict[str, set], drawn: dict):
    """A value from a spec: a pool's name, a list, {range: [lo, hi]}, {dates: [first, last]},
    or {after: ARG, days: [lo, hi]}. Values of one pool differ within a task (two cities, not one twice)."""
    key = spec if isinstance(spec, str) else json.dumps(spec, sort_keys=True)
    if isinstance(spec, str):
        spec = catalogue()["pools"][spec]
    if isinstance(spec, dict) and "after" in spec:
        start = date.fromisoformat(drawn[spec["after"]])
        return (start + timedelta(days=rng.randint(*spec["days"]))).isoformat()
    seen = used.setdefault(key, set())
    for _ in range(20):
        if isinstance(spec, list):
            value = rng.choice(spec)
        elif "range" in spec:
            value = rng.randint(*spec["range"])
        else:
            first, last = map(date.fromisoformat, spec["dates"])
            value = (first + timedelta(days=rng.randint(0, (last - first).days))).isoformat()
        mark = json.dumps(value, sort_keys=True)
        if mark not in seen:
            seen.add(mark)
            return value
    raise Redraw(key)


def _values(fn: dict, rng: random.Random, used: dict[str, set]) -> dict:
    """A value for every argument of a function (and the extra fields of joint pools)."""
    drawn: dict = {}
    for arg, spec in fn.get("values", {}).items():
        value = _draw(spec, rng, used, drawn)
        if isinstance(value, dict):  # a joint pool: several values that belong together
            drawn.update(value)
        else:
            drawn[arg] = value
    for arg, schema in fn["parameters"]["properties"].items():
        if arg not in drawn and "enum" in schema:  # need not differ: three cities can share a unit
            drawn[arg] = rng.choice(schema["enum"])
    return drawn


def _text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _target(token: str, fns: list[dict]) -> tuple[str, list[int]]:
    """The argument a placeholder names and the calls it goes to: {city_2} to call 2 only,
    {city} to every call with a city."""
    m = NUMBERED.fullmatch(token)
    if m and 1 <= int(m[2]) <= len(fns) and m[1] in fns[int(m[2]) - 1]["parameters"]["properties"]:
        return m[1], [int(m[2]) - 1]
    calls = [i for i, fn in enumerate(fns) if token in fn["parameters"]["properties"]]
    if not calls:
        names = ", ".join(fn["name"] for fn in fns)
        raise ValueError(f"tool_tasks.yaml: placeholder {{{token}}} names no argument of {names}")
    return token, calls


def expand(template: dict, rng: random.Random, used: dict[str, set]) -> tuple[str, list[dict], list[dict]]:
    """(request text, the calls it asks for, each call's drawn values) for a template:
    {"text", "calls": [function names], "set"?: {arg: value}, "same"?: [[from, to]]}.
    `used` holds the pool values the task has drawn so far; these are not drawn again."""
    fns = [catalogue()["functions"][name] for name in template["calls"]]
    values = [_values(fn, rng, used) for fn in fns]
    mentioned: list[set[str]] = [set() for _ in fns]
    text_of: dict[str, str] = {}
    for token in dict.fromkeys(TOKEN.findall(template["text"])):
        arg, calls = _target(token, fns)
        for i in calls:  # a value the text mentions once is the same in every call it goes to
            values[i][arg] = values[calls[0]][arg]
            mentioned[i].add(arg)
        text_of[token] = _text(values[calls[0]][arg])
    for src, dst in template.get("same", []):
        (src_arg, (i,)), (dst_arg, (j,)) = _target(src, fns), _target(dst, fns)
        values[j][dst_arg] = values[i][src_arg]
        mentioned[j].add(dst_arg)
    for key, value in template.get("set", {}).items():
        arg, calls = _target(key, fns)
        for i in calls:
            values[i][arg] = value
            mentioned[i].add(arg)
    text = TOKEN.sub(lambda m: text_of[m[1]], template["text"])
    calls = [{"name": fn["name"], "arguments": {a: values[i][a] for a in fn["parameters"]["properties"]
                                                if a in mentioned[i]}} for i, fn in enumerate(fns)]
    return text, calls, values


def single_templates(fn: dict) -> list[dict]:
    return [{"calls": [fn["name"]], **(t if isinstance(t, dict) else {"text": t})} for t in fn["templates"]]


def _fill(value, ctx: dict):
    """A result field with its placeholders filled: a field that is one placeholder keeps the value's type."""
    if isinstance(value, dict):
        return {k: _fill(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ctx) for v in value]
    if not isinstance(value, str):
        return value

    def one(token: str):
        a, _, b = token.partition("*")
        return round(ctx[a] * ctx[b], 2) if b else ctx[a]

    if (m := TOKEN.fullmatch(value)) is not None:
        return one(m[1])
    return TOKEN.sub(lambda m: _text(one(m[1])), value)


def _earlier_exchange(fn: dict, rng: random.Random, used: dict[str, set]) -> tuple[list[dict], dict]:
    """A finished exchange with one tool (request, call, the tool's result, the assistant's
    answer), and its call."""
    text, (call,), (values,) = expand(rng.choice(single_templates(fn)), rng, used)
    props = fn["parameters"]["properties"]
    ctx = {**{k: v for k, v in values.items() if k not in props},
           **{k: s["default"] for k, s in props.items() if "default" in s}, **call["arguments"]}
    result = rng.choice(fn["results"])
    ctx.update({k: v for k, v in result.items() if not isinstance(v, str) or not TOKEN.search(v)})
    result = _fill(result, ctx)
    answer = _fill(rng.choice(fn["answers"]), {**ctx, **result})
    return [
        {"role": "user", "content": text},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": json.dumps(result, ensure_ascii=False)},
        {"role": "assistant", "content": answer},
    ], call


def tool_definition(fn: dict) -> dict:
    return {"type": "function", "function": {"name": fn["name"], "description": fn["description"],
                                             "parameters": copy.deepcopy(fn["parameters"])}}


def _offer(needed: list[str], candidates: list[str], n: int, family: str, rng: random.Random) -> list[str]:
    """`needed` plus distractors up to n tools: the family's other functions first, as an app
    offers related tools together, then the rest."""
    functions = catalogue()["functions"]
    rest = [c for c in candidates if c not in needed]
    related = [c for c in rest if functions[c]["family"] == family]
    others = [c for c in rest if functions[c]["family"] != family]
    rng.shuffle(related)
    rng.shuffle(others)
    return needed + (related + others)[:max(0, n - len(needed))]


def no_call_families(family: str, families: list[str]) -> list[str]:
    """The selected families whose tools cannot serve a request of `family`."""
    cat = catalogue()["families"]
    return [f for f in families if f != family and f not in cat[family]["overlaps"] and not cat[f].get("general")]


def _task(category: str, p: ToolTasksParams, rng: random.Random) -> dict:
    cat = catalogue()
    functions = [name for f in p.families for name in cat["families"][f]["functions"]]
    n = rng.randint(*p.tools_offered)
    used: dict[str, set] = {}  # shared with an earlier exchange: it asks about another city, date...
    if category == "parallel":
        template = rng.choice(_parallel_templates(p.families))
        family = template["family"]
        text, expected, _ = expand(template, rng, used)
        offered = _offer(list(dict.fromkeys(template["calls"])), functions, n, family, rng)
    elif category == "no_call":
        # Two in three: a request of a family that some selected families' tools cannot serve,
        # offered only those; else (or when no family has such tools) chit-chat.
        servable = [f for f in p.families if no_call_families(f, p.families)]
        if servable and rng.random() < 2 / 3:
            family = rng.choice(servable)
            fn = cat["functions"][rng.choice(list(cat["families"][family]["functions"]))]
            text, _, _ = expand(rng.choice(single_templates(fn)), rng, used)
            allowed = [name for f in no_call_families(family, p.families) for name in cat["families"][f]["functions"]]
        else:
            family = CHAT
            chat = cat["chat"]
            template = rng.choice(chat["templates"])
            text = TOKEN.sub(lambda m: _text(_draw(chat["values"][m[1]], rng, {}, {})), template)
            allowed = [name for f in p.families if not cat["families"][f].get("general")
                       for name in cat["families"][f]["functions"]]
        rng.shuffle(allowed)
        offered, expected = allowed[:n], []
    else:
        family = rng.choice(p.families)
        fn = cat["functions"][rng.choice(list(cat["families"][family]["functions"]))]
        text, expected, _ = expand(rng.choice(single_templates(fn)), rng, used)
        offered = [fn["name"]] if category == "single" else _offer([fn["name"]], functions, max(2, n), family, rng)
    rng.shuffle(offered)
    messages = [{"role": "system", "content": p.system_prompt}] if p.system_prompt is not None else []
    if rng.random() < p.multi_turn:
        earlier, call = _earlier_exchange(cat["functions"][rng.choice(offered)], rng, used)
        if call in expected:  # a call without drawn values (list_reminders()) asked again
            raise Redraw(call["name"])
        messages += earlier
    messages.append({"role": "user", "content": text})
    tools = [tool_definition(cat["functions"][name]) for name in offered]
    return {"question": text,
            "reference": json.dumps({"tools": tools, "expected": expected}, ensure_ascii=False),
            "messages": messages, "tools": tools, "category": category, "family": family}


def _quota(count: int, mix: dict[str, float]) -> list[str]:
    """count categories in the mix's proportions (largest remainders round), in a fixed order."""
    total = sum(mix.values())
    share = {c: count * mix.get(c, 0) / total for c in CATEGORIES}
    n = {c: int(share[c]) for c in CATEGORIES}
    for c in sorted(CATEGORIES, key=lambda c: n[c] - share[c])[:count - sum(n.values())]:
        n[c] += 1
    return [c for c in CATEGORIES for _ in range(n[c])]


@PROMPT_SOURCES.register("tool-tasks", params=ToolTasksParams, example="""
prompts:
  train:
    - source: tool-tasks
      count: 2000
      seed: 0
      families: [weather, calendar, email, units, web_search, bookings]
      mix: {single: 0.35, multiple: 0.3, parallel: 0.15, no_call: 0.2}
      tools_offered: [2, 4]
      multi_turn: 0.2
  eval:
    - source: tool-tasks    # held out: another seed
      count: 200
      seed: 1
verifiers:
  - name: tool-call
""")
def generate_tool_tasks(p: ToolTasksParams) -> Iterable[dict]:
    """Seeded tool-use tasks (weather, calendar, email, bookings, ...) with the exact expected calls."""
    rng = random.Random(p.seed)
    categories = _quota(p.count, p.mix)
    rng.shuffle(categories)
    seen: set[str] = set()
    attempts = 0
    for category in categories:
        while True:
            attempts += 1
            if attempts > 50 * p.count:  # distinct tasks: a few small families run out
                raise ValueError(
                    f"tool-tasks: only {len(seen)} distinct tasks found for count {p.count}; "
                    "add families, widen tools_offered or lower count"
                )
            try:
                row = _task(category, p, rng)
            except Redraw:
                continue
            key = json.dumps([row["messages"], sorted(t["function"]["name"] for t in row["tools"])],
                             sort_keys=True, ensure_ascii=False)
            if key not in seen:
                seen.add(key)
                yield row
                break
