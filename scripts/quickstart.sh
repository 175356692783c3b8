#!/usr/bin/env bash
# The main job: install, then train a tiny LLaMA-style model without and with FP4 (paper recipe)
# on real English text through the real trainer; prints both loss curves, writes a PNG.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m megatron_fp4.tools.quickstart "$@"
