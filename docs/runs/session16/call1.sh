#!/usr/bin/env bash
# Session 16, call 1: where nvfp4's fwd+bwd time goes at HEAD (13142c6), before any change:
# torch.profiler tables of 7B qkv and fc1 (nvfp4) and qkv (mxfp4), and the NVFP4 quantizers' shares of copy.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv | tee $OUT/call_1_device.txt
cd $REPO/benchmarks
( for r in nvfp4 mxfp4; do timeout 90 python3 profile_linear.py --recipe $r --rows 24; done
  timeout 60 python3 profile_linear.py --recipe nvfp4 --n 22016 --rows 24 ) 2>&1 | grep -v -i warn | tee $OUT/call_1_profile.txt
cd /tmp
timeout 90 python3 $REPO/benchmarks/bench_quant.py --graph --shapes 8192x4096 8192x12288 --only NVFP4 2>&1 | grep -v -i warn | tee $OUT/call_1_bench_quant.txt
