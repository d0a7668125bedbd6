"""Agreement of the `tool-call` verifier with BFCL's own AST checker on BFCL's tests.

For every test of the categories given, a fixed set of candidate answers is built from the test's
ground truth: right ones (first or last acceptable value of each argument, optional arguments
left out, calls in another order, an int where a float is declared, strings in other case) and
wrong ones (a changed value, a value of another type, a required argument dropped, an unknown
argument, another function name, a call missing or one too many). Both checkers judge each
candidate: BFCL's `ast_checker` (bfcl_eval/eval_checker/ast_eval, imported with its model table
stubbed out, the only part that pulls in model SDKs) on the decoded calls, distill's verifier on
the same calls written as <tool_call> blocks, with the test's tools converted by the `bfcl` prompt
source. Printed: agreement per category and per kind of candidate, and the disagreements
(`--show N`) so each one can be explained.

    python bench/bfcl_agreement.py [--categories simple_python multiple ...] [--show 20]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import types
from collections import Counter
from types import SimpleNamespace

from distill.prompts import bfcl
from distill.verifiers import VerifyContext
from distill.verifiers.tool_call import ToolCallParams, verify_tool_call

CATEGORIES = ["simple_python", "multiple", "parallel", "parallel_multiple",
              "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple"]


def bfcl_checker():
    """BFCL's ast_checker; its model table (which imports every model SDK) replaced by one that
    keeps function names as they are."""
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stub = types.ModuleType(name)
        stub.MODEL_CONFIG_MAPPING = type("Any", (dict,), {"__missing__": lambda self, k: SimpleNamespace(underscore_to_dot=False)})()
        sys.modules[name] = stub
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    def check(test: dict, category: str, calls: list[dict]) -> bool:
        result = ast_checker(test["function"], calls, test["ground_truth"], Language.PYTHON, category, "distill")
        return bool(result["valid"])

    return check


def _pick(accepted, last: bool):
    if not isinstance(accepted, list):  # a nested value written without alternatives
        return accepted
    values = [a for a in accepted if a != ""]
    if not values:
        return None
    value = values[-1] if last else values[0]
    if isinstance(value, dict):  # an object argument: {key: [acceptable values]}
        return {k: _pick(v, last) for k, v in value.items() if _pick(v, last) is not None}
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        return [_pick([v], last) for v in value]
    return value


def _call(gt: dict, last=False, optional=True) -> dict:
    (name, args), = gt.items()
    out = {}
    for arg, accepted in args.items():
        if not optional and "" in accepted:
            continue
        value = _pick(accepted, last)
        if value is not None:
            out[arg] = value
    return {name: out}


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 7
    if isinstance(value, str):
        return value + " zq"
    if isinstance(value, list):
        return value[:-1] if value else ["zq"]
    if isinstance(value, dict):
        return {**value, "zq_key": "zq"}
    return "zq"


def _other_type(value):
    if isinstance(value, str):
        return 12345
    return json.dumps(value)  # a number, list or object sent as a string


def _first_arg(calls: list[dict], where=None):
    for i, call in enumerate(calls):
        (name, args), = call.items()
        for arg, value in args.items():
            if where is None or where(value):
                return i, name, arg
    return None


def _with(calls: list[dict], i: int, name: str, args: dict) -> list[dict]:
    out = copy.deepcopy(calls)
    out[i] = {name: args}
    return out


def candidates(test: dict) -> dict[str, list[dict]]:
    """kind -> the calls a model might answer with."""
    gt = test["ground_truth"]
    right = [_call(c) for c in gt]
    out = {"first values": right, "last values": [_call(c, last=True) for c in gt],
           "optional left out": [_call(c, optional=False) for c in gt]}
    if len(right) > 1:
        out["reversed order"] = right[::-1]
        out["call missing"] = right[:-1]
    out["call repeated"] = right + right[:1]
    (name0, args0), = right[0].items()
    out["other function"] = _with(right, 0, name0 + "_v2", args0)
    out["unknown argument"] = _with(right, 0, name0, {**args0, "zq_extra": 1})
    if hit := _first_arg(right):
        i, name, arg = hit
        args = right[i][name]
        out["changed value"] = _with(right, i, name, {**args, arg: _changed(args[arg])})
        out["other type"] = _with(right, i, name, {**args, arg: _other_type(args[arg])})
        required = next((f["parameters"].get("required", []) for f in test["function"] if f["name"] == name), [])
        if req := next((a for a in required if a in args), None):
            out["required dropped"] = _with(right, i, name, {k: v for k, v in args.items() if k != req})
    if hit := _first_arg(right, lambda v: isinstance(v, float) and v.is_integer()):
        i, name, arg = hit
        out["int for float"] = _with(right, i, name, {**right[i][name], arg: int(right[i][name][arg])})
    if hit := _first_arg(right, lambda v: isinstance(v, int) and not isinstance(v, bool)):
        i, name, arg = hit
        out["float for int"] = _with(right, i, name, {**right[i][name], arg: float(right[i][name][arg])})
    if hit := _first_arg(right, lambda v: isinstance(v, bool)):
        i, name, arg = hit
        out["int for bool"] = _with(right, i, name, {**right[i][name], arg: int(right[i][name][arg])})
    if hit := _first_arg(right, lambda v: isinstance(v, str) and any(c in v for c in " ,.-")):
        i, name, arg = hit
        bare = "".join(c for c in right[i][name][arg] if c not in " ,.-")
        out["punctuation dropped"] = _with(right, i, name, {**right[i][name], arg: bare})
    if hit := _first_arg(right, lambda v: isinstance(v, str) and v.upper() != v):
        i, name, arg = hit
        out["upper case"] = _with(right, i, name, {**right[i][name], arg: right[i][name][arg].upper()})
    return out


def as_completion(calls: list[dict]) -> str:
    return "\n".join("<tool_call>\n" + json.dumps({"name": n, "arguments": a}) + "\n</tool_call>"
                     for c in calls for n, a in c.items())


def compare(categories: list[str]) -> list[dict]:
    """One row per (test, candidate): what each checker said."""
    check = bfcl_checker()
    rows = []
    for category in categories:
        for test in bfcl.tests(category):
            tools = [bfcl.to_openai_tool(f) for f in test["function"]]
            reference = json.dumps({"ground_truth": test["ground_truth"]})
            kinds = candidates(test)
            verdicts = verify_tool_call([as_completion(c) for c in kinds.values()], [reference] * len(kinds),
                                        ToolCallParams(), VerifyContext(questions=[None] * len(kinds),
                                                                        finish_reasons=[None] * len(kinds),
                                                                        tools=[tools] * len(kinds)))
            for (kind, calls), verdict in zip(kinds.items(), verdicts):
                try:
                    theirs = check(test, category, calls)
                except Exception as e:  # noqa: BLE001 - the reference checker fails on a few inputs
                    theirs = f"error: {type(e).__name__}: {e}"
                rows.append({"id": test["id"], "category": category, "kind": kind, "calls": calls,
                             "bfcl": theirs, "distill": verdict.score == 1.0, "reason": verdict.reason})
    return rows


def report(rows: list[dict], show: int) -> float:
    judged = [r for r in rows if isinstance(r["bfcl"], bool)]
    agree = [r for r in judged if r["bfcl"] == r["distill"]]
    print(f"candidates: {len(rows)}; BFCL's checker raised on {len(rows) - len(judged)}")
    for field in ("category", "kind"):
        total, same = Counter(r[field] for r in judged), Counter(r[field] for r in agree)
        print(f"\n{field:<24} {'agree':>8} {'of':>6}  {'rate':>7}")
        for key in total:
            print(f"{key:<24} {same[key]:>8} {total[key]:>6}  {same[key] / total[key]:>7.2%}")
    rate = len(agree) / len(judged)
    print(f"\nagreement: {len(agree)}/{len(judged)} = {rate:.2%}")
    for r in [r for r in judged if r["bfcl"] != r["distill"]][:show]:
        print(f"- {r['id']} [{r['kind']}] BFCL {'accepts' if r['bfcl'] else 'rejects'}, distill "
              f"{'accepts' if r['distill'] else 'rejects'} ({r['reason']}): {json.dumps(r['calls'])[:300]}")
    return rate


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--categories", nargs="+", default=CATEGORIES)
    parser.add_argument("--show", type=int, default=20)
    args = parser.parse_args()
    report(compare(args.categories), args.show)
