"""bfcl: the single-turn test sets of the Berkeley Function Calling Leaderboard as conversation prompts.

The data ships in the `bfcl-eval` wheel (Apache-2.0), under bfcl_eval/data/: BFCL_v4_<category>.json
holds one test per line (its turns and the function definitions offered) and
possible_answer/BFCL_v4_<category>.json the acceptable calls. Each test becomes a conversation row:
the turns, the functions as OpenAI tools whose parameters are JSON Schema (BFCL writes "dict" for
object, "float" for number, "tuple" for an array and "any" for any type), the category, and the
reference {"ground_truth": [...]} that the `tool-call` verifier checks the calls against, with
BFCL's rules. The irrelevance categories have no possible answer: no call is right there
(ground_truth []). live_relevance has none either and any valid call is right: its reference holds
the tools alone. Only the package's data files are read; its code is not imported.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import random
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import Field

from distill.prompts import PROMPT_SOURCES
from distill.registry import Params

Category = Literal["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance",
                   "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
                   "live_irrelevance", "live_relevance"]
NO_CALL = ("irrelevance", "live_irrelevance")  # no call is right
ANY_CALL = ("live_relevance",)  # any valid call is right
INSTALL = 'pip install --no-deps "bfcl-eval==2026.3.23"'

# BFCL's type names (and the JSON Schema ones it also uses) -> JSON Schema; "any" has no type.
JSON_TYPES = {
    "string": "string", "integer": "integer", "float": "number", "number": "number",
    "boolean": "boolean", "array": "array", "tuple": "array", "dict": "object", "object": "object",
    "null": "null", "any": None,
}


class BfclParams(Params):
    categories: list[Category] = Field(
        ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance"], min_length=1)
    # At most this many tests of each category, drawn with `seed`; None: all of them.
    limit_per_category: int | None = Field(None, ge=1)
    seed: int = 0
    # A system turn put before each test's own turns; None: the tests as BFCL wrote them.
    system_prompt: str | None = None
    licence: str = "apache-2.0"


def data_dir() -> Path:
    """bfcl_eval/data of the installed wheel, found without importing the package (its imports
    pull in model SDKs). Raises ValueError saying how to install it."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the bfcl prompt source reads the data of the bfcl-eval package, which is not installed: {INSTALL}")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def to_json_schema(schema: Any, where: str) -> dict:
    """One BFCL parameter schema as JSON Schema; raises ValueError naming a type it cannot map."""
    if not isinstance(schema, dict):
        raise ValueError(f"{where} is a {type(schema).__name__}, not a schema object")
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "type":
            if value not in JSON_TYPES:
                raise ValueError(f"{where}: unknown BFCL type {value!r} (known: {', '.join(JSON_TYPES)})")
            if JSON_TYPES[value] is not None:
                out["type"] = JSON_TYPES[value]
        elif key == "properties" and isinstance(value, dict):
            out[key] = {name: to_json_schema(sub, f"{where}.{name}") for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_json_schema(value, f"{where}.{key}")
        elif key == "required" and not isinstance(value, list):
            continue  # a flag on one property, not JSON Schema's list of names
        elif key == "optional":
            continue  # what it says is already in the parent's "required"
        else:
            out[key] = copy.deepcopy(value)
    return out


def to_openai_tool(fn: dict) -> dict:
    """A BFCL function definition as an OpenAI tool."""
    function: dict[str, Any] = {"name": fn["name"]}
    if "description" in fn:
        function["description"] = fn["description"]
    parameters = to_json_schema(fn.get("parameters") or {"type": "dict", "properties": {}}, f"{fn['name']}.parameters")
    function["parameters"] = {**parameters, "type": "object"}  # an object at the top, as OpenAI requires
    return {"type": "function", "function": function}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tests(category: str) -> list[dict]:
    """BFCL's tests of a category, each with its "ground_truth" (None where the category has none)."""
    data = data_dir()
    path = data / f"BFCL_v4_{category}.json"
    if not path.exists():
        raise ValueError(f"{path} is missing: the installed bfcl-eval is not the version distill reads ({INSTALL})")
    answers_path = data / "possible_answer" / path.name
    answers = {a["id"]: a["ground_truth"] for a in _lines(answers_path)} if answers_path.exists() else {}
    rows = _lines(path)
    if category not in NO_CALL + ANY_CALL and (missing := [r["id"] for r in rows if r["id"] not in answers]):
        raise ValueError(f"{answers_path}: no possible answer for {len(missing)} tests (first: {missing[0]})")
    return [{**r, "ground_truth": [] if category in NO_CALL else answers.get(r["id"])} for r in rows]


def _row(test: dict, category: str, system_prompt: str | None) -> dict:
    if len(test["question"]) != 1:
        raise ValueError(f"BFCL test {test['id']} has {len(test['question'])} turns; only single-turn categories are read")
    messages = [{"role": m["role"], "content": m["content"]} for m in test["question"][0]]
    if system_prompt is not None:
        messages.insert(0, {"role": "system", "content": system_prompt})
    tools = [to_openai_tool(fn) for fn in test["function"]]
    reference = {"tools": tools} if test["ground_truth"] is None else {"ground_truth": test["ground_truth"]}
    question = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    return {"question": question, "reference": json.dumps(reference, ensure_ascii=False), "messages": messages,
            "tools": tools, "category": category}


@PROMPT_SOURCES.register("bfcl", params=BfclParams, example="""
prompts:
  eval:
    - source: bfcl
      categories: [simple_python, multiple, parallel, parallel_multiple, irrelevance]
      limit_per_category: 50
      seed: 0
verifiers:
  - name: tool-call
""")
def read_bfcl(p: BfclParams) -> Iterable[dict]:
    """BFCL's single-turn function-calling tests (from the bfcl-eval package), checked by BFCL's rules."""
    for category in dict.fromkeys(p.categories):
        chosen = tests(category)
        if p.limit_per_category is not None and p.limit_per_category < len(chosen):
            picked = sorted(random.Random(f"{p.seed}:{category}").sample(range(len(chosen)), p.limit_per_category))
            chosen = [chosen[i] for i in picked]
        for test in chosen:
            yield _row(test, category, p.system_prompt)
