#!/usr/bin/env bash
# Session 14, call 7: the 7B graphed step (paper with the order-statistics OCC bounds).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
cd benchmarks
timeout 300 python3 bench_e2e.py --shapes 7B --layers 2 4 --steps 6 --recipes bf16 paper-graph direct-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/call_7_bench_e2e_7B.md
