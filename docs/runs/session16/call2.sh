#!/usr/bin/env bash
# Session 16, call 2: BF16 operands from the quantizers and 16-bit SR draws. GPU tests of the block
# formats; quantize+decode against quantize-with-values; SR shares HEAD (.before = 13142c6) vs new;
# bench_linear nvfp4/mxfp4 HEAD vs new; profile of nvfp4 at 7B qkv.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
timeout 300 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernel_tests/test_bf16_operands.py tests/kernel_tests/test_quantize_tokens.py \
  tests/kernel_tests/test_quantize_nvfp4.py tests/kernel_tests/test_quantize_blocks.py tests/test_nvfp4_recipe.py tests/test_linear.py \
  tests/kernel_tests/test_block_gemm.py tests/test_stochastic.py 2>&1 | tail -8 | tee $OUT/call_2_gpu_tests.txt
cd /tmp
timeout 60 python3 $REPO/benchmarks/bench_quant.py --graph --values --shapes 8192x4096 8192x12288 2>&1 | grep -v -i warn | tee $OUT/call_2_values.txt
for tree in .before .; do echo "== $tree"; PYTHONPATH=/tmp/site:$REPO/$tree timeout 40 python3 $REPO/$tree/benchmarks/bench_quant.py --graph --shapes 8192x12288 --only "1x16 SR" "RHT SR" 2>&1 | grep -v -i warn; done | tee $OUT/call_2_sr.txt
for tree in .before .; do echo "== $tree"; PYTHONPATH=/tmp/site:$REPO/$tree timeout 80 python3 $REPO/$tree/benchmarks/bench_linear.py --models 7B 13B --recipes nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward"; done | tee $OUT/call_2_bench_linear.txt
cd $REPO/benchmarks
timeout 60 python3 profile_linear.py --recipe nvfp4 --rows 14 2>&1 | grep -v -i warn | tee $OUT/call_2_profile.txt
