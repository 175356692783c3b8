#!/usr/bin/env bash
# The main job (for now): install, then the numerics demo of every FP4 recipe on one linear layer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m megatron_fp4.tools.numerics_demo "$@"
