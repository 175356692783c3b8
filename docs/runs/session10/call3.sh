#!/usr/bin/env bash
# Session 10, third device call: delayed output-gradient scaling with the fallback pass that reads
# nothing unless needed (GPU tests, quantizer table, 7B end to end), and 13B mxfp4/nvfp4 end to end.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/kernels/test_quantize_swiglu.py 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
cd benchmarks
timeout 120 python3 bench_quant.py 2>&1 | grep -v -i "warn" | tee $OUT/bench_quant.txt
timeout 200 python3 bench_e2e.py --shapes 7B --layers 2 4 --recipes bf16 paper-graph paper-graph-delayed direct-graph direct-graph-delayed 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/bench_e2e_7B.md
timeout 200 python3 bench_e2e.py --shapes 13B --layers 2 4 --recipes bf16 mxfp4-graph nvfp4-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/bench_e2e_13B.md
