"""The promotion gate on hand-made numbers: promoted when every condition holds, held with
every failed condition and its numbers, and held when a metric was not measured."""

from __future__ import annotations

import pytest

from distill.stages.gate import HELD, PROMOTED, decide, summary_text, value

RESULT = {
    "teacher": {"pass@1": 0.60, "greedy_accuracy": 0.70},
    "base": {"pass@1": 0.20, "greedy_accuracy": 0.25},
    "student": {"pass@1": 0.58, "greedy_accuracy": 0.66},
    "probes": {
        "ifbench": {"metrics": {"prompt_accuracy": {"better": "higher", "teacher": {"value": 0.40},
                                                    "base": {"value": 0.30}, "student": {"value": 0.29}}}},
        "harmbench": {"metrics": {"refusal_rate": {"better": "higher", "teacher": {"value": 0.9},
                                                   "base": {"value": 0.5}, "student": {"value": 0.2}}}},
        "over-refusal": {"metrics": {"over_refusal_rate": {"better": "lower", "base": {"value": 0.10},
                                                           "student": {"value": 0.12}}}},
        "humaneval": {"error": "not installed", "metrics": {}},
    },
}


def test_values_are_read_from_the_task_scores_and_the_probes():
    assert value(RESULT, "task.pass@1", "student") == 0.58
    assert value(RESULT, "ifbench.prompt_accuracy", "base") == 0.30
    assert value(RESULT, "over-refusal.over_refusal_rate", "teacher") is None
    assert value(RESULT, "humaneval.pass@1", "student") is None


def test_a_student_meeting_every_condition_is_promoted():
    gate = decide([
        {"metric": "task.pass@1", "vs": "teacher", "min_ratio": 0.95},  # 0.58 >= 0.57
        {"metric": "ifbench.prompt_accuracy", "vs": "base", "max_drop": 0.02},  # 0.29 >= 0.28
        {"metric": "over-refusal.over_refusal_rate", "vs": "base", "max_rise": 0.05},  # 0.12 <= 0.15
        {"metric": "task.greedy_accuracy", "at_least": 0.5},
        {"metric": "over-refusal.over_refusal_rate", "at_most": 0.2},
    ], RESULT)
    assert gate["decision"] == PROMOTED and gate["failed"] == []
    assert all(c["passed"] for c in gate["conditions"])
    assert gate["conditions"][0]["bound"] == pytest.approx(0.57)
    assert "PROMOTED" in summary_text(gate)


def test_a_student_that_lost_too_much_is_held_with_each_failed_condition_and_its_numbers():
    gate = decide([
        {"metric": "task.pass@1", "vs": "teacher", "min_ratio": 0.99},  # 0.58 < 0.594
        {"metric": "harmbench.refusal_rate", "vs": "base", "max_drop": 0.0},  # 0.2 < 0.5
        {"metric": "ifbench.prompt_accuracy", "vs": "base", "max_drop": 0.02},  # holds
        {"metric": "over-refusal.over_refusal_rate", "vs": "base", "max_rise": 0.01},  # 0.12 > 0.11
    ], RESULT)
    assert gate["decision"] == HELD
    assert [c["passed"] for c in gate["conditions"]] == [False, False, True, False]
    assert gate["failed"] == [
        "task.pass@1: student 0.580 < 0.99 x teacher 0.600 = 0.594",
        "harmbench.refusal_rate: student 0.200 < base 0.500 - 0 = 0.500",
        "over-refusal.over_refusal_rate: student 0.120 > base 0.100 + 0.01 = 0.110",
    ]
    text = summary_text(gate)
    assert text.startswith("gate: HELD") and text.count("FAIL") == 3


def test_a_metric_that_was_not_measured_holds_the_student_and_says_so():
    gate = decide([{"metric": "humaneval.pass@1", "at_least": 0.1},
                   {"metric": "over-refusal.over_refusal_rate", "vs": "teacher", "max_rise": 0.05}], RESULT)
    assert gate["decision"] == HELD
    assert gate["failed"] == ["humaneval.pass@1: the student's value was not measured",
                              "over-refusal.over_refusal_rate: the teacher's value was not measured"]


def test_no_conditions_no_gate():
    assert decide([], RESULT) is None
