#!/usr/bin/env bash
# Session 11, seventh device call: the RMSNorm fused into the QKV / fc1 quantizers. GPU tests of
# every kernel whose signature changed and of the fused paths; the norm table of bench_quant;
# bench_e2e 7B with and without the fused quantizer inputs (-nofq: SwiGLU and norms written out).
set -o pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../../.."
timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_quantize_rmsnorm.py tests/kernels/test_quantize_rows.py tests/kernels/test_quantize_rows_inline.py tests/kernels/test_quantize_swiglu.py tests/kernels/test_e2m1_round.py tests/test_fused_inputs.py tests/test_linear.py tests/test_cuda_graphs.py tests/test_occ_inline.py 2>&1 | tail -5 | tee $OUT/gpu_tests.txt
cd benchmarks
timeout 60 python3 -c "import bench_quant; bench_quant.norm_table()" 2>&1 | grep -v -i warn | tee $OUT/bench_quant_norm.txt
timeout 300 python3 bench_e2e.py --shapes 7B --layers 2 4 --recipes bf16 paper-graph paper-graph-nofq direct-graph direct-graph-nofq 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/bench_e2e.md
