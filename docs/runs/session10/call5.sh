#!/usr/bin/env bash
# Session 10, fifth device call: every GPU test this session's changes touch, on the final code.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 330 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_quantize_swiglu.py tests/kernels/test_quantize_rows.py tests/kernels/test_quantize_rows_inline.py tests/kernels/test_backward_kernels.py tests/test_fused_inputs.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py tests/test_occ_inline.py tests/test_cuda.py 2>&1 | tail -6 | tee $OUT/gpu_tests.txt
