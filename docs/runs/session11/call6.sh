#!/usr/bin/env bash
# Session 11, sixth device call: bench_e2e at the 13B shape with this session's quantizers.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../../benchmarks"
timeout 400 python3 bench_e2e.py --shapes 13B --layers 2 4 --recipes bf16 paper-graph direct-graph mxfp4-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/bench_e2e_13B.md
