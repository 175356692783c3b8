#!/usr/bin/env bash
# Session 14, call 6: calls 2-4's pass variants again with the FP8 layout as constexprs.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 100 python3 docs/runs/session14/grad_merged.py 2>&1 | grep -v -i warn | tee $OUT/call_6_grad_merged.txt
