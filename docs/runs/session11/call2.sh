#!/usr/bin/env bash
# Session 11, second device call: GPU tests of the inline maxima / transposed-tile changes and the
# new warp defaults; bench_quant; the grad-quantize sweep with the transposed 16-bit tile; the
# 2-warp rows at 2048 / 5120; bench_linear at 7B/13B.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_e2m1_round.py tests/kernels/test_quantize_rows.py tests/kernels/test_quantize_rows_inline.py tests/kernels/test_quantize_swiglu.py tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_occ_inline.py tests/test_linear.py 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
cd benchmarks
timeout 100 python3 bench_quant.py 2>&1 | grep -v -i "warn" | tee $OUT/bench_quant.txt
timeout 120 python3 bench_quant.py --no-table --sweep --sweep-families grad --sweep-shapes 8192x4096 8192x11008 2>&1 | tee $OUT/bench_quant_sweep_grad.txt
timeout 60 python3 bench_quant.py --no-table --sweep --sweep-families rows --sweep-shapes 8192x2048 16384x5120 2>&1 | grep "whole row" | tee $OUT/bench_quant_sweep_rows.txt
timeout 150 python3 bench_linear.py --models 7B 13B --recipes paper direct nvfp4 mxfp4 2>&1 | grep -v -i warn | tee $OUT/bench_linear.txt
