"""Evaluation scores carry 95% bootstrap intervals over the held-out prompts."""

from __future__ import annotations

from distill.schema import EVAL_SCHEMA
from distill.stages.evaluate import bootstrap_ci, metrics
from distill.teachers import Teacher

import pyarrow as pa
import pytest


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


def test_an_engines_time_per_answer_leaves_its_start_out_and_sees_requests_run_together(monkeypatch):
    """Three batches that come back together after a 40 s engine start, each request 2 s in the
    engine: 2 s of engine work for 48 answers. The first-batch figure reads almost nothing; the
    engine figure reads what the answers cost."""
    from distill.stages import evaluate

    clock = [1000.0]
    monkeypatch.setattr(evaluate.time, "time", lambda: clock[0])
    started, first, engine_from = clock[0], None, None
    for arrival in (1042.0, 1042.001, 1042.002):
        clock[0] = arrival
        batch = [{"seconds": 2.0}] * 16
        first = first or (clock[0], len(batch))
        engine_from = evaluate.first_submitted(batch, engine_from)
    timing = evaluate.answer_timing(started, first, 48, engine_from)
    assert timing["engine_seconds_per_answer"] == pytest.approx(2.002 / 48)
    assert timing["steady_seconds_per_answer"] == pytest.approx(0.002 / 32)
    assert timing["seconds"] == pytest.approx(42.002)
    assert evaluate.seconds_per_answer(timing) == timing["engine_seconds_per_answer"]
    # A backend that does not say how long requests spent in the engine: the steady figure only.
    untimed = evaluate.answer_timing(started, first, 48, evaluate.first_submitted([{"text": "x"}], None))
    assert untimed["engine_seconds_per_answer"] is None
    assert evaluate.seconds_per_answer(untimed) == untimed["steady_seconds_per_answer"]
