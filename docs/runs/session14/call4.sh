#!/usr/bin/env bash
# Session 14, call 4: instruction-count variants of the delayed grad quantizer's pass, graph timing.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
timeout 150 python3 docs/runs/session14/grad_merged.py 2>&1 | grep -v -i warn | tee $OUT/call_4_grad_merged.txt
