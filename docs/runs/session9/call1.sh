#!/usr/bin/env bash
# Session 9, first device call: GPU tests of the changed kernels, then the quantizer, block-GEMM
# and linear benchmarks (each writes its own file under $OUT).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/device.txt
python3 -m pytest -q -p no:cacheprovider tests/kernels tests/test_stochastic.py tests/test_nvfp4_recipe.py 2>&1 | tail -40 | tee $OUT/gpu_tests.txt
cd benchmarks
python3 bench_quant.py 2>&1 | tee $OUT/bench_quant.txt
python3 bench_linear.py --models 7B 13B --recipes paper direct nvfp4 mxfp4 2>&1 | tee $OUT/bench_linear.txt
python3 profile_linear.py --recipe nvfp4 --rows 16 2>&1 | grep -v Warn | cut -c1-60,100-160 | tee $OUT/profile_nvfp4.txt
python3 bench_block_gemm.py --sweep --shapes 7B-qkv-fprop 7B-qkv-dgrad 13B-fc1-fprop 2>&1 | tee $OUT/bench_block_gemm.txt
python3 bench_quant.py --sweep --no-table --sweep-shapes 8192x4096 8192x11008 2>&1 | tee $OUT/bench_quant_sweep.txt
