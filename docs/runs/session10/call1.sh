#!/usr/bin/env bash
# Session 10, first device call: GPU tests of the SwiGLU-fused fc2 quantizer (and the kernels it
# shares), the quantizer tables with the fused/unfused SwiGLU comparison and its warps sweep, and
# the 7B end-to-end step with and without the fusion (-nofq rows).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/device.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider tests/kernels/test_quantize_swiglu.py tests/kernels/test_quantize_rows.py tests/kernels/test_quantize_rows_inline.py tests/test_fused_inputs.py tests/mcore/test_layers.py tests/test_linear.py tests/test_occ_inline.py tests/test_cuda_graphs.py 2>&1 | tail -30 | tee $OUT/gpu_tests.txt
cd benchmarks
timeout 150 python3 bench_quant.py 2>&1 | tee $OUT/bench_quant.txt
timeout 60 python3 bench_quant.py --sweep --no-table --sweep-families swiglu --sweep-shapes 8192x11008 8192x13824 2>&1 | tee $OUT/bench_quant_sweep.txt
timeout 300 python3 bench_e2e.py --shapes 7B --layers 2 4 --recipes bf16 paper-graph paper-graph-nofq direct-graph direct-graph-nofq 2>&1 | tee $OUT/bench_e2e.md
