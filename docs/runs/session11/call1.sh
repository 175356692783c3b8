#!/usr/bin/env bash
# Session 11, first device call: the GPU tests of every kernel built on _e2m1_round (one fp32
# addition instead of the integer rounding) and of the inline operand without its clamp; then
# bench_quant's table and the row / grad sweeps (defaults for the new instruction counts).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/device.txt
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels tests/test_occ_inline.py tests/test_fused_inputs.py tests/test_linear.py 2>&1 | tail -6 | tee $OUT/gpu_tests.txt
timeout 150 python3 benchmarks/bench_quant.py 2>&1 | tee $OUT/bench_quant.txt
timeout 120 python3 benchmarks/bench_quant.py --no-table --sweep --sweep-families rows grad --sweep-shapes 8192x4096 8192x11008 2>&1 | tee $OUT/bench_quant_sweep.txt
