#!/usr/bin/env bash
# Session 16, call 8: bench_linear with CUDA-graph replays (new --graph; BF16 graphed too), HEAD (.before = 13142c6,
# run through this session's bench_linear.py, which only calls fp4_linear) and the final code, in one call.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
cd /tmp
echo "== .before"; PYTHONPATH=/tmp/site:$REPO/.before:$REPO/benchmarks timeout 110 python3 $REPO/benchmarks/bench_linear.py --graph --models 7B 13B --recipes nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_8_bench_linear_graph_before.txt
echo "== new"; PYTHONPATH=/tmp/site:$REPO timeout 150 python3 $REPO/benchmarks/bench_linear.py --graph --models 7B 13B --recipes paper direct nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_8_bench_linear_graph.txt
