#!/usr/bin/env bash
# Session 15, call 4: the final code's GPU tests (block formats, the token-pair quantizer in the
# dispatch and in a CUDA graph); bandwidth of the MXFP4 operands; bench_linear for every recipe;
# the 7B graphed step with mxfp4 and nvfp4 against BF16.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
timeout 260 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_quantize_tokens.py tests/kernels/test_quantize_blocks.py \
  tests/kernels/test_quantize_nvfp4.py tests/test_nvfp4_recipe.py tests/test_linear.py tests/kernels/test_block_gemm.py tests/test_gemm_backends.py \
  tests/test_cuda_graphs.py 2>&1 | tail -8 | tee $OUT/call_4_gpu_tests.txt
cd /tmp
timeout 60 python3 $REPO/benchmarks/bench_quant.py --graph --shapes 8192x4096 16384x5120 8192x11008 16384x13824 --only MXFP4 2>&1 | grep -v -i warn | tee $OUT/call_4_bench_quant.txt
timeout 150 python3 $REPO/benchmarks/bench_linear.py --models 7B 13B --recipes paper direct nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_4_bench_linear.txt
cd $REPO/benchmarks
timeout 200 python3 bench_e2e.py --shapes 7B --layers 2 4 --steps 6 --recipes bf16 mxfp4-graph nvfp4-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/call_4_bench_e2e_7B.md
