#!/usr/bin/env bash
# Session 9, second device call: GPU tests (kernels, linear, backends, graphs, OCC, SR), the
# quantizer table and sweep, the block GEMM at its new default, the linear, the nvfp4 profile.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
python3 -m pytest -q -p no:cacheprovider tests/kernels tests/test_stochastic.py tests/test_nvfp4_recipe.py tests/test_cuda.py tests/test_cuda_graphs.py tests/test_gemm_backends.py tests/test_weight_cache.py tests/test_linear.py tests/test_occ.py tests/test_occ_inline.py 2>&1 | tail -30 | tee $OUT/gpu_tests.txt
cd benchmarks
python3 bench_quant.py 2>&1 | tee $OUT/bench_quant.txt
python3 bench_block_gemm.py 2>&1 | tee $OUT/bench_block_gemm.txt
python3 bench_linear.py --models 7B 13B --recipes paper direct nvfp4 mxfp4 2>&1 | grep -v Warn | tee $OUT/bench_linear.txt
python3 profile_linear.py --recipe nvfp4 --rows 14 2>&1 | grep -v Warn | cut -c1-60,100-160 | tee $OUT/profile_nvfp4.txt
python3 bench_quant.py --sweep --no-table --sweep-shapes 8192x4096 16384x5120 8192x11008 16384x13824 --sweep-families rows 2>&1 | tee $OUT/sweep_rows.txt
python3 bench_quant.py --sweep --no-table --sweep-shapes 8192x4096 8192x11008 --sweep-families grad blocks 2>&1 | tee $OUT/sweep_grad_blocks.txt
