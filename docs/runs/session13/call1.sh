#!/usr/bin/env bash
# Session 13, call 1: (a) the delayed grad quantizer in two launches: GPU tests, graph timing,
# eager host time; (b) where an eager FP4 linear's host time goes (bench_host + cProfile) and
# the eager vs graphed 1.3B step.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/call_1_device.txt
timeout 200 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py tests/test_gemm_backends.py tests/test_fused_inputs.py > $OUT/call_1_gpu_tests.txt 2>&1; tail -3 $OUT/call_1_gpu_tests.txt
timeout 90 python3 docs/runs/session13/grad_graph.py 2>&1 | grep -v -i warn | tee $OUT/call_1_grad_graph.txt
cd benchmarks
timeout 100 python3 bench_host.py --recipes paper direct paper-no-occ --cprofile paper --cprofile-rows 45 2>&1 | grep -v -i "warn" > $OUT/call_1_host_paper.txt
timeout 60 python3 bench_host.py --recipes direct --cprofile direct --cprofile-rows 45 2>&1 | grep -v -i "warn" > $OUT/call_1_host_direct.txt
timeout 60 python3 bench_host.py --shape 8192 2048 2048 --recipes paper direct 2>&1 | grep "^|" > $OUT/call_1_host_1p3b.txt
head -8 $OUT/call_1_host_paper.txt; cat $OUT/call_1_host_1p3b.txt
timeout 240 python3 bench_e2e.py --shapes 1.3B --layers 2 4 --recipes bf16 paper direct paper-graph direct-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/call_1_bench_e2e_1p3b.md
