#!/usr/bin/env bash
# Session 9, third device call: the GPU tests on the final defaults, the quantizer table, the
# linear, and the end-to-end step at the 7B and 13B shapes.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
python3 -m pytest -q -p no:cacheprovider tests/kernels tests/test_stochastic.py tests/test_nvfp4_recipe.py tests/test_cuda.py tests/test_cuda_graphs.py tests/test_gemm_backends.py tests/test_weight_cache.py tests/test_linear.py tests/test_occ.py tests/test_occ_inline.py 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
cd benchmarks
python3 bench_quant.py 2>&1 | tee $OUT/bench_quant.txt
python3 bench_linear.py --models 7B 13B --recipes paper paper-no-occ direct nvfp4 mxfp4 2>&1 | grep -v Warn | tee $OUT/bench_linear.txt
python3 bench_e2e.py --shapes 7B 13B --layers 2 4 --recipes bf16 paper-graph direct-graph nvfp4-graph mxfp4-graph 2>&1 | tee $OUT/bench_e2e.md
