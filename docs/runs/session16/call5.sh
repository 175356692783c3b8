#!/usr/bin/env bash
# Session 16, call 5: bench_linear nvfp4/mxfp4 (plus paper/direct, new code) HEAD (.before = 13142c6) vs new in one call;
# the 7B graphed step with nvfp4 and mxfp4 against eager BF16 (new code).
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
cd /tmp
echo "== .before"; PYTHONPATH=/tmp/site:$REPO/.before timeout 80 python3 $REPO/.before/benchmarks/bench_linear.py --models 7B 13B --recipes nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_5_bench_linear_before.txt
echo "== new"; timeout 120 python3 $REPO/benchmarks/bench_linear.py --models 7B 13B --recipes paper direct nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_5_bench_linear.txt
cd $REPO/benchmarks
timeout 220 python3 bench_e2e.py --shapes 7B --layers 2 4 --steps 6 --recipes bf16 mxfp4-graph nvfp4-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/call_5_bench_e2e_7B.md
