#!/usr/bin/env bash
# Session 16, call 7: where nvfp4's fwd+bwd time goes with the final code (7B qkv and fc1), for the next session.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
cd $REPO/benchmarks
( timeout 60 python3 profile_linear.py --recipe nvfp4 --rows 12; timeout 60 python3 profile_linear.py --recipe nvfp4 --n 22016 --rows 12 ) 2>&1 | grep -v -i warn | tee $OUT/call_7_profile.txt
