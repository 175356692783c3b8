#!/usr/bin/env bash
# Session 10, second device call: GPU tests of delayed output-gradient scaling (kernel, layer,
# CUDA graph) and of the SwiGLU fusion after its move to FP4MLP.convert; the quantizer table with
# the delayed column; the 7B end-to-end step with -delayed rows, and mxfp4 with its along-the-tokens
# kernel (not re-measured in session 9).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 220 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_fused_inputs.py tests/test_cuda_graphs.py tests/test_linear.py 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
cd benchmarks
timeout 120 python3 bench_quant.py 2>&1 | grep -v -i "warn" | tee $OUT/bench_quant.txt
timeout 330 python3 bench_e2e.py --shapes 7B --layers 2 4 --recipes bf16 paper-graph paper-graph-delayed direct-graph direct-graph-delayed mxfp4-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/bench_e2e.md
