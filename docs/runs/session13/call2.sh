#!/usr/bin/env bash
# Session 13, call 2: delayed gradient scaling with headroom (--fp4-grad-amax-margin, default 1)
# and its fallback counter: GPU tests; the two delayed launches timed alone; 7B end to end with
# delayed scaling (margin 1 and 0) against current scaling, fallback rates printed (mock data).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
timeout 150 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py tests/test_gemm_backends.py tests/test_fused_inputs.py > $OUT/call_2_gpu_tests.txt 2>&1; tail -3 $OUT/call_2_gpu_tests.txt
timeout 70 python3 docs/runs/session13/grad_graph.py 2>&1 | grep -v -i warn | tee $OUT/call_2_grad_graph.txt
cd benchmarks
timeout 340 python3 bench_e2e.py --shapes 7B --layers 2 4 --steps 6 --recipes bf16 paper-graph paper-graph-delayed paper-graph-delayed-m0 direct-graph direct-graph-delayed 2>&1 | grep "^|\|^device\|^Marginal\|rror\|fell back" | tee $OUT/call_2_bench_e2e_7B.md
