#!/usr/bin/env bash
# Session 15, call 2: the block quantizer walking contiguous tensors as one run of blocks; the RHT
# layout's tile back to 64x64 (GPU tests, graph-timed bandwidth before = HEAD / after); what limits
# the along-the-tokens quantizer (tokens_diag.py); bench_linear nvfp4/mxfp4 after.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
timeout 200 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_quantize_nvfp4.py tests/kernels/test_quantize_blocks.py \
  tests/test_nvfp4_recipe.py tests/test_linear.py 2>&1 | tail -5 | tee $OUT/call_2_gpu_tests.txt
cd /tmp
timeout 90 python3 $REPO/docs/runs/session15/tokens_diag.py 2>&1 | grep -v -i warn | tee $OUT/call_2_tokens_diag.txt
Q="--graph --shapes 8192x4096 16384x5120 8192x11008 16384x13824 --only MXFP4 NVFP4"
for side in before after; do
  if [ $side = before ]; then P=/tmp/site:$REPO/.before; else P=/tmp/site:$REPO; fi
  PYTHONPATH=$P timeout 100 python3 $REPO/benchmarks/bench_quant.py $Q 2>&1 | grep -v -i warn | sed "s/^# /# $side: /" | tee -a $OUT/call_2_bench_quant.txt
done
timeout 100 python3 $REPO/benchmarks/bench_linear.py --models 7B 13B --recipes nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_2_bench_linear.txt
