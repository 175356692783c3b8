#!/usr/bin/env bash
# Session 16, call 9: after the review's refactor of the linear's shared-scale condition: the CUDA linear tests.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
timeout 200 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernel_tests/test_bf16_operands.py tests/test_linear.py tests/test_nvfp4_recipe.py tests/test_cuda_graphs.py 2>&1 | tail -4 | tee $OUT/call_9_gpu_tests.txt
