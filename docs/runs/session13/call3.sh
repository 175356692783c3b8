#!/usr/bin/env bash
# Session 13, call 3: the delayed grad quantizer's tile / warps in CUDA-graph replay.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
timeout 200 python3 docs/runs/session13/grad_sweep.py 2>&1 | grep -v -i warn | tee $OUT/call_3_grad_sweep.txt
