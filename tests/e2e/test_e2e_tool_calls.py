"""The agent demo's teacher, for real: SmolLM2-135M-Instruct through the hermes template on
vLLM via Ray, sampling generated tool tasks with `sampling.constrained_calls`. The samples decoded
under the call grammar are well-formed calls to the offered tools (the grammar reaches the
engine); the free ones are not constrained; the lineage says which was which."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from distill.run import RunDir

pytestmark = pytest.mark.slow


def test_constrained_samples_are_calls_to_the_offered_tools(tmp_path):
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "e2e-tools",
        "teacher": {"id": "smollm2-135m-instruct", "template": "hermes", "engine_args": {
            "gpu_memory_utilization": 0.1,
            "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True}}},
        "prompts": {"train": [{"source": "tool-tasks", "count": 6, "seed": 3,
                               "mix": {"single": 1, "multiple": 1, "parallel": 1}}]},
        "sampling": {"n": 2, "constrained_calls": 0.5, "max_tokens": 160, "seed": 1, "batch_size": 4},
        "verifiers": [{"name": "tool-call"}],
        "tracking": {"wandb": "disabled"},
    }))
    done = subprocess.run([sys.executable, "-m", "distill.cli", "run", "recipe.yaml", "--until", "sample"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [run_dir] = (tmp_path / "runs" / "e2e-tools").iterdir()
    samples = RunDir(run_dir).read_samples().to_pylist()
    assert len(samples) == 12 and not [s["error"] for s in samples if s["error"]]
    for s in samples:
        params = json.loads(s["sampling_params"])
        offered = {t["function"]["name"] for t in json.loads(s["tools"])}
        if s["sample_index"] == 0:  # the first of each prompt's two: under the grammar
            assert "structured_outputs" in params
            if s["finish_reason"] == "stop":  # a call cut by max_tokens cannot be whole
                calls = json.loads(s["tool_calls"] or "null")
                assert calls, f"not a call: {s['completion']!r}"
                assert {c["name"] for c in calls} <= offered
        else:
            assert "structured_outputs" not in params
    constrained_stopped = [s for s in samples if s["sample_index"] == 0 and s["finish_reason"] == "stop"]
    assert len(constrained_stopped) >= 3, [s["completion"] for s in samples if s["sample_index"] == 0]
