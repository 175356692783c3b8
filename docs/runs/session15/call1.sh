#!/usr/bin/env bash
# Session 15, call 1: the recipe kernel's per-layout tiles and MXFP4's power-of-two multiplier
# (GPU tests; graph-timed bandwidth before/after; tile sweep), the wgrad GEMM writing BF16;
# bench_linear nvfp4/mxfp4 before (.before = HEAD's package) and after, same call.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv | tee $OUT/call_1_device.txt
export PYTHONPATH=/tmp/site:$REPO
timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_quantize_nvfp4.py tests/kernels/test_quantize_blocks.py \
  tests/test_nvfp4_recipe.py tests/test_linear.py tests/kernels/test_block_gemm.py 2>&1 | tail -15 | tee $OUT/call_1_gpu_tests.txt
Q="--graph --shapes 8192x4096 16384x5120 8192x11008 --only MXFP4 NVFP4"
cd /tmp
for side in before after; do
  if [ $side = before ]; then P=/tmp/site:$REPO/.before; else P=/tmp/site:$REPO; fi
  PYTHONPATH=$P timeout 100 python3 $REPO/benchmarks/bench_quant.py $Q 2>&1 | grep -v -i warn | sed "s/^# /# $side: /" | tee -a $OUT/call_1_bench_quant.txt
done
timeout 120 python3 $REPO/benchmarks/bench_quant.py --graph --no-table --sweep --sweep-families recipe --sweep-shapes 8192x4096 2>&1 | grep -v -i warn | tee $OUT/call_1_recipe_sweep.txt
for side in before after; do
  if [ $side = before ]; then P=/tmp/site:$REPO/.before; else P=/tmp/site:$REPO; fi
  echo "== $side" | tee -a $OUT/call_1_bench_linear.txt
  PYTHONPATH=$P timeout 150 python3 $REPO/benchmarks/bench_linear.py --models 7B 13B --recipes nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee -a $OUT/call_1_bench_linear.txt
done
