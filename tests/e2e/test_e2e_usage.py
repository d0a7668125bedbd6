"""The usage loop for real, on two of the demo agent's workloads (a classification and a tool
routing one): import (redacted), convert (plan, SmolLM2-135M-Instruct zero-shot and few-shot on
vLLM via Ray, a fine-tune with TRL on the logged answers replayed, the student's evaluation, the
gate), the report; and not one planted secret or personal value anywhere in the store, the
prompt files, the run directories, the cards or the report."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from distill.usage.synthetic import generate_logs
from support.usage_logs import leaks

pytestmark = pytest.mark.slow
KEPT = ("ticket-intent", "travel-desk")


def cli(*args, cwd):
    done = subprocess.run([sys.executable, "-m", "distill.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    return done.stdout


def test_logs_to_promotion_decisions_and_a_report_with_nothing_personal_left(tmp_path):
    log = generate_logs(700, seed=5, untagged=0.3)
    records = [r for r, w in zip(log.records, log.workloads) if w in KEPT]
    (tmp_path / "logs.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    cli("usage", "import", "logs.jsonl", "--to", "store", cwd=tmp_path)
    out = cli("usage", "convert", "store", "--out", "conversion", "--max-train", "8", "--max-heldout", "6",
              "--max-train-tokens", "2000", "--min-train", "1", "--min-calls", "10", "--shots", "2",
              cwd=tmp_path)
    result = json.loads((tmp_path / "conversion" / "convert.json").read_text())
    clusters = {c["id"]: c for c in result["clusters"]}
    assert set(KEPT) <= set(clusters), clusters.keys()
    for cid in KEPT:
        c = clusters[cid]
        assert c["chosen_by_plan"] and c["decision"] in ("promote-base", "promote-student", "keep-llm"), c
        assert c["reasons"], c
        assert {(b["model"], b["shots"]) for b in c["baselines"]} == {("smollm2-135m-instruct", 0),
                                                                       ("smollm2-135m-instruct", 2)}
        assert all(b["answers"] == 6 and 0 <= b["accuracy"] <= 1 for b in c["baselines"])
        if c["decision"] != "promote-base":  # trained and evaluated against the replayed logged answers
            student = c["student"]
            trained = (tmp_path / "conversion" / cid / "train.jsonl").read_text().splitlines()
            assert c["llm_accuracy"] == 1.0 and student["answers"] == 6 and student["train_rows"] == len(trained)
            assert student["seconds_per_call"] is None or student["seconds_per_call"] > 0
            card = (tmp_path / "conversion" / "runs" / f"usage-{cid}").glob("*/student/README.md")
            assert any("Promotion decision" in p.read_text() for p in card)
        assert c["llm_cost_per_call"] > 0 and c["calls_per_day"] > 0
    assert result["overall"]["calls"] == sum(c["calls"] for c in result["clusters"])
    html = (tmp_path / "conversion" / "report.html").read_text()
    assert all(cid in html for cid in KEPT) and "<svg" in html
    assert re.search(r"Small models take \d+% of the calls \(\d+ of \d+\)", out) and "report.html" in out, out
    assert leaks(log.planted, tmp_path / "store", tmp_path / "conversion") == []
