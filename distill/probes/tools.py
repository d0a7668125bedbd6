"""bfcl: function calling, on the Berkeley Function Calling Leaderboard's single-turn tests.

A student distilled on other work may stop calling tools, call them with malformed arguments, or
call one where none fits. The tests and their acceptable calls are read by the `bfcl` prompt
source (distill/prompts/bfcl.py, from the `bfcl-eval` wheel's data files, Apache-2.0): each test
is one request of its turns with its functions offered as OpenAI tools. Answers are judged by the
`tool-call` verifier with BFCL's rules: the calls must parse, fit the tools' schemas and match the
ground truth, every expected call and no other (`require_all`: a parallel test half done fails).
In the irrelevance categories the right answer is no call; in live_relevance any valid call is.

Metric: accuracy, the share of tests answered right. A failed request is wrong.
"""

from __future__ import annotations

import importlib.metadata

from pydantic import Field

from distill.probes import HIGHER, Probe, ProbeItem, ProbeSet, Ratio, item_id, register, subset
from distill.prompts import bfcl
from distill.prompts.bfcl import Category
from distill.registry import Params


class BfclProbeParams(Params):
    # One set of each kind: a single call, choosing among several functions, and knowing when no
    # function fits; the parallel categories and the live (user-contributed) ones can be added.
    categories: list[Category] = Field(["simple_python", "multiple", "irrelevance"], min_length=1)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


@register("bfcl", params=BfclProbeParams)
class BfclProbe(Probe):
    """BFCL: single-turn function calling (right call, right arguments, no call when none fits)."""

    metrics = {"accuracy": HIGHER}
    # A few calls as JSON, or a sentence declining; room for a short preamble.
    max_tokens = 512

    def load(self, params: BfclProbeParams, limit: int | None, seed: int) -> ProbeSet:
        items = []
        for category in dict.fromkeys(params.categories):
            # read_bfcl yields a category's tests in the file's order, so BFCL's own ids line up;
            # they key the items (a few tests repeat another's turns and tools).
            ids = [t["id"] for t in bfcl.tests(category)]
            rows = list(bfcl.read_bfcl(bfcl.BfclParams(categories=[category])))
            for bfcl_id, row in zip(ids, rows, strict=True):
                request = {"messages": row["messages"], "tools": row["tools"]}
                items.append(ProbeItem(item_id("bfcl", bfcl_id), [request],
                                       {"bfcl_id": bfcl_id, "category": category, "reference": row["reference"]}))
        return ProbeSet(subset(items, limit, seed), total=len(items),
                        source=f"bfcl-eval {_version('bfcl-eval')}", licence="apache-2.0")

    def score(self, items: list[ProbeItem], answers: list[list[str | None]],
              params: BfclProbeParams) -> list[dict[str, Ratio]]:
        from distill.verifiers import VERIFIERS, VerifyContext
        from distill.verifiers.tool_call import ToolCallParams

        out: list[dict[str, Ratio]] = [{"accuracy": Ratio(0, 1)} for _ in items]  # a failed request is wrong
        answered = [i for i, answer in enumerate(answers) if answer[0] is not None]
        if not answered:
            return out
        chosen = [items[i] for i in answered]
        ctx = VerifyContext(questions=[_question(item) for item in chosen], finish_reasons=[None] * len(chosen),
                            tools=[item.requests[0]["tools"] for item in chosen])
        verdicts = VERIFIERS.get("tool-call").fn([answers[i][0] for i in answered],
                                                 [item.data["reference"] for item in chosen],
                                                 ToolCallParams(require_all=True), ctx)
        for i, verdict in zip(answered, verdicts, strict=True):
            # None: the reference could not be read, which BFCL's data never gives; not counted.
            out[i] = {"accuracy": Ratio(0, 0) if verdict.score is None else Ratio(float(verdict.score == 1.0), 1)}
        return out


def _question(item: ProbeItem) -> str | None:
    users = [m["content"] for m in item.requests[0]["messages"] if m["role"] == "user"]
    return users[-1] if users and isinstance(users[-1], str) else None

