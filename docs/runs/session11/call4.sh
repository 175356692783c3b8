#!/usr/bin/env bash
# Session 11, fourth device call: the GPU tests of every kernel this session changed, on the final code.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/test_occ_inline.py tests/test_fused_inputs.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py 2>&1 | grep -v "Warning\|warn" | tail -8 | tee $OUT/gpu_tests.txt
