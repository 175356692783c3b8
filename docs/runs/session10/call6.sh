#!/usr/bin/env bash
# Session 10, sixth device call: the delayed-scaling tests after the history buffer moved to the
# GEMM's device at the first forward (review fix).
set -o pipefail
cd "$(dirname "$0")/../../.."
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py -k "delayed or history" 2>&1 | tail -3 | tee $OUT/gpu_tests.txt
