#!/usr/bin/env bash
# Set up the environment if needed, then run the embedded default demo (digits, no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/obliviate quickstart paths.output_dir="${OUTPUT_DIR:-outputs/quickstart}" "$@"
