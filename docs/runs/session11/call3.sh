#!/usr/bin/env bash
# Session 11, third device call: what differs in the inline operand for fp32 inputs (call 2's four
# failures; bf16 passed), then bench_e2e at the 7B shape with this session's quantizers.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 60 python3 docs/runs/session11/debug_inline_fp32.py 2>&1 | tee $OUT/debug_inline_fp32.txt
cd benchmarks
timeout 330 python3 bench_e2e.py --shapes 7B --layers 2 4 --recipes bf16 paper-graph direct-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/bench_e2e.md
