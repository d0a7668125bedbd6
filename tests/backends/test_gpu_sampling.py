"""On GPUs: a tensor-parallel teacher through Ray Data LLM. Skipped without CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from support.models import write_tiny_teacher
from distill.run import RunDir

pytestmark = [pytest.mark.gpu, pytest.mark.slow]


def test_tensor_parallel_teacher_samples_every_prompt(tiny_model, tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs for tensor_parallel_size 2")
    write_tiny_teacher(tmp_path / "tiny.yaml", tiny_model)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "gpu-tp",
        "teacher": {"id": "tiny.yaml", "engine_args": {"tensor_parallel_size": 2, "gpu_memory_utilization": 0.3}},
        "prompts": {"train": [{"source": "arithmetic", "count": 20}]},
        "sampling": {"n": 2, "max_tokens": 16},
        "verifiers": [{"name": "final-number"}],
    }))
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "run", "r.yaml", "--until", "sample"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run_dir = next((tmp_path / "runs" / "gpu-tp").iterdir())
    table = RunDir(run_dir).read_samples()
    assert table.num_rows == 40 and not any(table["error"].to_pylist())
