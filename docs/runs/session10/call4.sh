#!/usr/bin/env bash
# Session 10, fourth device call: delayed output-gradient scaling with the fallback as a persistent
# branch (GPU tests, quantizer table, 7B end to end against current scaling).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
cd benchmarks
timeout 100 python3 bench_quant.py 2>&1 | grep -v -i "warn" | tee $OUT/bench_quant.txt
timeout 200 python3 bench_e2e.py --shapes 7B --layers 2 4 --recipes bf16 paper-graph paper-graph-delayed direct-graph direct-graph-delayed 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/bench_e2e.md
