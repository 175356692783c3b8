#!/usr/bin/env bash
# Session 15, call 3: the along-the-tokens quantizer from BF16 token pairs (kernels/quantize_tokens.py):
# GPU tests; graph-timed bandwidth against the transposing kernel in the same run; its tile sweep;
# bench_linear nvfp4/mxfp4 before (.before = 8b121e4, after call 2) and after.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
timeout 200 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_quantize_tokens.py tests/kernels/test_quantize_blocks.py \
  tests/test_nvfp4_recipe.py tests/test_linear.py 2>&1 | tail -8 | tee $OUT/call_3_gpu_tests.txt
cd /tmp
timeout 100 python3 $REPO/benchmarks/bench_quant.py --graph --shapes 8192x4096 16384x5120 8192x11008 --only tokens 2>&1 | grep -v -i warn | tee $OUT/call_3_bench_quant.txt
timeout 100 python3 $REPO/benchmarks/bench_quant.py --graph --no-table --sweep --sweep-families pairs --sweep-shapes 8192x4096 2>&1 | grep -v -i warn | tee $OUT/call_3_pairs_sweep.txt
for side in before after; do
  if [ $side = before ]; then P=/tmp/site:$REPO/.before; else P=/tmp/site:$REPO; fi
  echo "== $side" | tee -a $OUT/call_3_bench_linear.txt
  PYTHONPATH=$P timeout 120 python3 $REPO/benchmarks/bench_linear.py --models 7B 13B --recipes nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee -a $OUT/call_3_bench_linear.txt
done
