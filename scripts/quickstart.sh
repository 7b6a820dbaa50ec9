#!/usr/bin/env bash
# Set up the environment if needed, then run the embedded default demo (digits, no downloads).
# The run goes to outputs/quickstart-digits (a new time-stamped folder when that one is taken);
# OUTPUT_DIR=DIR or paths.output_dir=DIR chooses the folder. Extra arguments go to
# `obliviate quickstart` (e.g. quickstart.methods=[GA,RL]).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec .venv/bin/obliviate quickstart ${OUTPUT_DIR:+"paths.output_dir=$OUTPUT_DIR"} "$@"
