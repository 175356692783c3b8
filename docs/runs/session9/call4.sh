#!/usr/bin/env bash
# Session 9, fourth device call (short): the MXFP4 along-the-tokens kernel's GPU tests and the mxfp4 linear.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
python3 -m pytest -q -p no:cacheprovider tests/kernels/test_quantize_nvfp4.py tests/kernels/test_quantize_blocks.py tests/test_nvfp4_recipe.py tests/test_linear.py 2>&1 | tail -6 | tee $OUT/gpu_tests.txt
cd benchmarks
python3 bench_linear.py --models 7B 13B --recipes mxfp4 nvfp4 2>&1 | grep -v Warn | tee $OUT/bench_linear.txt
