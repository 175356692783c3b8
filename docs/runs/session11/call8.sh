#!/usr/bin/env bash
# Session 11, eighth device call: the row kernels with 2 warps up to 5120 (13B's hidden size;
# measured faster in call 2's sweep): their GPU tests, now with a 5120-wide shape.
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 200 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_quantize_rows.py tests/kernels/test_quantize_rows_inline.py tests/kernels/test_quantize_rmsnorm.py tests/kernels/test_quantize_swiglu.py 2>&1 | tail -4 | tee $OUT/gpu_tests.txt
cd benchmarks
timeout 60 python3 bench_quant.py 2>&1 | grep -v -i warn | head -8 | tee $OUT/bench_quant.txt
