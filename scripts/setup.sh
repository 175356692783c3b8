#!/usr/bin/env bash
# Create .venv (once) and install megatron-fp4 with its test tools into it.
# torch comes first and pinned, so nothing later pulls a CUDA build onto a CPU machine:
# on this project's CPU machines `torch==2.13.0` is a local CPU wheel. Override with
# TORCH_SPEC (e.g. TORCH_SPEC=torch on a GPU machine that should use PyPI's CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "${TORCH_SPEC:-torch==2.13.0}"
.venv/bin/python -m pip install --quiet -e ".[test]"
