"""Evaluation scores carry 95% bootstrap intervals over the held-out prompts."""

from __future__ import annotations

from distill.schema import EVAL_SCHEMA
from distill.stages.evaluate import bootstrap_ci, metrics
from distill.teachers import Teacher

import pyarrow as pa


def test_the_interval_holds_the_mean_narrows_with_more_prompts_and_repeats():
    few = [1.0, 0.0] * 10
    many = [1.0, 0.0] * 500
    lo, hi = bootstrap_ci(few)
    assert lo < 0.5 < hi and hi - lo > 0.3
    lo2, hi2 = bootstrap_ci(many)
    assert lo2 < 0.5 < hi2 and hi2 - lo2 < 0.1
    assert bootstrap_ci(few) == [lo, hi]  # seeded
    assert bootstrap_ci([1.0] * 7) == [1.0, 1.0]
    assert bootstrap_ci([]) is None


def test_metrics_report_an_interval_for_each_score():
    rows = []
    for p in range(40):
        for i in range(4):
            rows.append({"role": "student", "model_id": "s", "model_revision": "r", "prompt_id": f"p{p}",
                         "kind": "sampled", "sample_index": i, "seed": i, "completion": "x", "finish_reason": "stop",
                         "completion_tokens": 3, "error": None, "verdicts": [], "correct": (p + i) % 3 == 0})
        rows.append({"role": "student", "model_id": "s", "model_revision": "r", "prompt_id": f"p{p}",
                     "kind": "greedy", "sample_index": -1, "seed": 0, "completion": "x", "finish_reason": "stop",
                     "completion_tokens": 3, "error": None, "verdicts": [], "correct": p % 2 == 0})
    model = Teacher(id="s", model="m", revision="r", licence="mit", params_b=0.1)
    m = metrics(pa.Table.from_pylist(rows, schema=EVAL_SCHEMA), model, {})
    for key in ("pass@1", "pass@k", "greedy_accuracy"):
        lo, hi = m[f"{key}_ci95"]
        assert lo <= m[key] <= hi
    assert m["greedy_accuracy"] == 0.5 and m["greedy_accuracy_ci95"][1] - m["greedy_accuracy_ci95"][0] > 0.1
