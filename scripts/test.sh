#!/usr/bin/env bash
# Set up the environment if needed, then run the test suite (offline).
#   scripts/test.sh            the default suite (what CI runs)
#   scripts/test.sh --slow     only the tests marked slow
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false WANDB_MODE=offline
if [ "${1:-}" = "--slow" ]; then
  shift
  exec .venv/bin/python -m pytest -m slow "$@"
fi
exec .venv/bin/python -m pytest -q "$@"
