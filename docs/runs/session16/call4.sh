#!/usr/bin/env bash
# Session 16, call 4: the final kernels (BF16 operands, 16-bit SR draws, the SR complement by one
# multiply-add, masks off for whole tiles, both NVFP4 tensor scales of dY / X from one read).
# GPU tests of the block formats, CUDA graphs and backends; SR shares HEAD (.before = 13142c6) vs new;
# the recipe kernel's tile sweep for the linear's dY / dY^T forms (with BF16 values).
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
timeout 330 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernel_tests/test_bf16_operands.py tests/kernel_tests/test_quantize_tokens.py \
  tests/kernel_tests/test_quantize_nvfp4.py tests/kernel_tests/test_quantize_blocks.py tests/test_nvfp4_recipe.py tests/test_linear.py \
  tests/kernel_tests/test_block_gemm.py tests/test_stochastic.py tests/test_gemm_backends.py tests/test_cuda_graphs.py 2>&1 | tail -8 | tee $OUT/call_4_gpu_tests.txt
cd /tmp
for tree in .before .; do echo "== $tree"; PYTHONPATH=/tmp/site:$REPO/$tree timeout 40 python3 $REPO/$tree/benchmarks/bench_quant.py --graph --shapes 8192x12288 --only "1x16 SR" "RHT SR" 2>&1 | grep -v -i warn; done | tee $OUT/call_4_sr.txt
timeout 100 python3 $REPO/benchmarks/bench_quant.py --graph --no-table --sweep --sweep-shapes 8192x12288 --sweep-families recipe 2>&1 | grep "values" | tee $OUT/call_4_sweep.txt
