#!/usr/bin/env bash
# Session 11, fourth and fifth device calls: the GPU tests of every kernel this session changed, on the final
# code (the fourth call passed, exit status 0, but its grep dropped the summary line; the fifth printed it).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 400 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/test_occ_inline.py tests/test_fused_inputs.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py -p no:warnings 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
