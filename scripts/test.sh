#!/usr/bin/env bash
# Install, then run the test suite on CPU (Triton kernels run in its interpreter; GPU tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export TRITON_INTERPRET="${TRITON_INTERPRET:-1}"
.venv/bin/python -m pytest -q tests "$@"
