#!/usr/bin/env bash
# Session 14, call 5: calls 2-4's pass variants again with the FP8 layout as constexprs.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 100 python3 docs/runs/session14/grad_merged.py 2>&1 | grep -v -i warn | tee $OUT/call_5_grad_merged.txt
timeout 100 python3 docs/runs/session14/grad_axes.py 2>&1 | grep -v -i warn | tee $OUT/call_5_grad_axes.txt
