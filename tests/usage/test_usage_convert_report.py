"""The conversion report: a row and a reason per cluster, data escaped, unknown costs never shown as
$0.00, plots skipped when there is nothing to draw, the changes section only after a conversion."""

import copy
import json
import re

import pytest

from distill.usage.convert_report import render_html, summary_lines, write_report


def _baselines(zero: float, few: float) -> list[dict]:
    return [{"model": "smollm2-135m-instruct", "shots": 0, "accuracy": zero, "relative": zero, "format_errors": 0.3,
             "answers": 46},
            {"model": "smollm2-135m-instruct", "shots": 3, "accuracy": few, "relative": few, "format_errors": 0.1,
             "answers": 46}]


@pytest.fixture
def result() -> dict:
    new = {"status": "new", "new_calls": 0, "previous": None}
    return {
        "kind": "distill usage convert", "version": 1, "at": "2026-12-07T08:00:00+00:00", "store": "store",
        "plan": "plan", "minutes": 17.2,
        "settings": {"min_relative": 0.9, "max_format_errors": 0.05, "shots": 3, "hardware": "cpu-2-core",
                     "hardware_usd_per_hour": 0.1},
        "prices": "path/of/price/table.yaml",
        "window": {"first": "2026-11-30T08:00:00+00:00", "last": "2026-12-07T08:00:00+00:00", "days": 7.0},
        "clusters": [
            {"id": "travel-desk", "label": "travel-desk", "task_type": "tool call", "calls": 663,
             "share_of_calls": 0.22, "calls_per_day": 94.7, "chosen_by_plan": True, "plan_reasons": [],
             "logged_models": ["gpt-4o"], "llm_cost_per_call": 0.0021, "llm_cost_per_day": 0.2,
             "llm_latency_ms": 850.0, "llm_accuracy": 1.0, "baselines": _baselines(0.1, 0.2),
             "student": {"name": "smollm2-135m-instruct-travel-desk", "base": "smollm2-135m-instruct",
                         "run_dir": "plan/runs/travel-desk", "card": "plan/runs/travel-desk/student/README.md",
                         "accuracy": 0.95, "pass@1": 0.93, "relative": 0.95, "format_errors": 0.02,
                         "seconds_per_call": 0.4, "cost_per_call": 0.00001, "train_rows": 300},
             "decision": "promote-student", "model": "smollm2-135m-instruct-travel-desk",
             "reasons": ["accuracy 95% of the LLM's, above the 90% the gate asks"],
             "cost_per_call_after": 0.00001, "cost_per_day_after": 0.001, "saving_per_day": 0.199,
             "change": dict(new, new_calls=663)},
            {"id": "ticket-triage", "label": "classification: <script>alert(1)</script>",
             "task_type": "classification", "calls": 1200, "share_of_calls": 0.4, "calls_per_day": 171.4,
             "chosen_by_plan": True, "plan_reasons": [], "logged_models": ["gpt-4o-mini"],
             "llm_cost_per_call": 0.0002, "llm_cost_per_day": 0.034, "llm_latency_ms": 400.0, "llm_accuracy": 1.0,
             "baselines": _baselines(0.3, 0.5),
             "student": {"name": "smollm2-135m-instruct-ticket-triage", "base": "smollm2-135m-instruct",
                         "run_dir": "plan/runs/ticket-triage", "card": "plan/runs/ticket-triage/student/README.md",
                         "accuracy": 0.8, "pass@1": 0.78, "relative": 0.8, "format_errors": 0.04,
                         "seconds_per_call": 0.3, "cost_per_call": 0.0000083, "train_rows": 500},
             "decision": "keep-llm", "model": "gpt-4o-mini",
             "reasons": ["accuracy 80% of the LLM's, below the 90% the gate asks"],
             "cost_per_call_after": 0.0002, "cost_per_day_after": 0.034, "saving_per_day": 0.0,
             "change": dict(new, new_calls=1200)},
            {"id": "essay-writer", "label": "free text: essay, draft", "task_type": "free text", "calls": 40,
             "share_of_calls": 0.013, "calls_per_day": 5.7, "chosen_by_plan": False,
             "plan_reasons": ["40 usable calls, the minimum is 50 (--min-calls)"],
             "logged_models": ["house-model"], "llm_cost_per_call": None, "llm_cost_per_day": None,
             "llm_latency_ms": None, "llm_accuracy": None, "baselines": [], "student": None,
             "decision": "not-converted", "model": "house-model", "reasons": [],
             "cost_per_call_after": None, "cost_per_day_after": None, "saving_per_day": None,
             "change": dict(new, new_calls=40)},
        ],
        "overall": {"calls": 2985, "calls_moved": 663, "share_moved": 0.22, "llm_cost_per_day": None,
                    "cost_per_day_after": None, "saving_per_day": 0.199, "saving_share": None,
                    "projected_saving_per_month": 5.97},
        "previous": None,
    }


def _row(page: str, cluster_id: str) -> str:
    rows = [r for r in re.findall(r"<tr>.*?</tr>", page, re.S) if f"<td>{cluster_id}" in r]
    assert len(rows) == 1, f"{cluster_id}: {len(rows)} rows"
    return rows[0]


def test_a_row_and_reasons_per_cluster(result):
    page = render_html(result)
    assert len(re.findall(r"<tr><td>", page)) == 3
    assert "promote-student" in _row(page, "travel-desk")
    assert "95%" in _row(page, "travel-desk")
    assert "keep-llm" in _row(page, "ticket-triage")
    assert "below the 90% the gate asks" in page
    assert "the plan skipped it: 40 usable calls, the minimum is 50" in page
    assert "22%" in page and "$5.97" in page  # the summary: share moved, saving per month
    assert "path/of/price/table.yaml" in page


def test_data_is_escaped(result):
    page = render_html(result)
    assert "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_unknown_costs_are_shown_as_unknown(result):
    row = _row(render_html(result), "essay-writer")
    assert "unknown -&gt; unknown" in row
    assert "$0.00" not in row
    summary = [line for line in summary_lines(result) if line.startswith("essay-writer")][0]
    assert "unknown -> unknown" in summary and "$0" not in summary


def test_tiny_costs_are_not_rounded_to_zero(result):
    assert "$0.20 -&gt; $0.0010" in _row(render_html(result), "travel-desk")


def test_two_plots_and_the_cost_plot_skipped_without_costs(result):
    page = render_html(result)
    assert page.count("<svg") == 2
    assert "gate (90%)" in page  # matplotlib keeps each text as a comment beside its glyph paths
    for c in result["clusters"]:
        c["llm_cost_per_day"] = c["cost_per_day_after"] = None
    page = render_html(result)
    assert page.count("<svg") == 1
    assert "every cost is unknown" in page


def test_accuracy_plot_skipped_when_nothing_was_measured(result):
    for c in result["clusters"]:
        c["baselines"], c["student"] = [], None
    page = render_html(result)
    assert page.count("<svg") == 1
    assert "no cluster has a measured baseline or student" in page


def test_write_report_writes_both_files(result, tmp_path):
    json_path, html_path = write_report(result, tmp_path / "convert")
    assert (json_path, html_path) == (tmp_path / "convert" / "report.json", tmp_path / "convert" / "report.html")
    assert json.loads(json_path.read_text()) == result
    page = html_path.read_text()  # not compared with render_html: each SVG carries the time it was drawn
    assert page.startswith("<!doctype html>") and page.count("<svg") == 2
    assert "keep-llm" in _row(page, "ticket-triage")
    assert not [p.name for p in json_path.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_summary_lines_name_every_cluster_and_the_share_moved(result):
    lines = summary_lines(result)
    for c in result["clusters"]:
        assert any(line.startswith(f"{c['id']}: {c['decision']}") for line in lines), c["id"]
    assert "accuracy vs LLM 95% (student)" in lines[0]
    assert "accuracy vs LLM not measured" in lines[2]
    assert "22% of the calls (663 of 2985)" in lines[-1] and "$0.20 a day" in lines[-1]


@pytest.mark.parametrize("change, shown", [
    (None, False),
    ({"previous": {"at": "2026-11-30T08:00:00+00:00", "share_moved": 0.1, "saving_per_day": 0.05}}, True),
    ({"status": "retrained"}, True),
    ({"status": "unchanged"}, True),
])
def test_changes_section_only_after_a_conversion(result, change, shown):
    result = copy.deepcopy(result)
    if change and "previous" in change:
        result["previous"] = change["previous"]
    elif change:
        result["clusters"][0]["change"] = {"status": change["status"], "new_calls": 120,
                                           "previous": {"decision": "keep-llm", "relative": 0.85,
                                                        "at": "2026-11-30T08:00:00+00:00"}}
    page = render_html(result)
    assert ("What changed since the last conversion" in page) == shown
    if change and "status" in change:
        assert "was keep-llm at 85%" in page
