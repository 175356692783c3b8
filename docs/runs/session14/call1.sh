#!/usr/bin/env bash
# Session 14, call 1: OCC's bounds by the order-statistics kernels: GPU tests; host time before
# (session 13's code, .before/) and after in the same call; host cost per kind of operation and
# the CPU op table of one FP4 linear; the 1.3B eager step.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/call_1_device.txt
timeout 240 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_order_statistics.py tests/test_occ.py tests/test_occ_inline.py tests/test_fused_inputs.py tests/test_linear.py tests/test_cuda_graphs.py tests/kernels/test_quantize_rmsnorm.py tests/kernels/test_quantize_rows_inline.py > $OUT/call_1_gpu_tests.txt 2>&1; tail -3 $OUT/call_1_gpu_tests.txt
for shape in "256 256 256" "8192 2048 2048"; do
  (cd .before/benchmarks && PYTHONPATH=/tmp/site:$PWD/.. timeout 60 python3 bench_host.py --shape $shape --recipes paper direct 2>&1 | grep "^|\|^#" | sed 's/^| paper/| paper (before)/; s/^| direct/| direct (before)/') >> $OUT/call_1_host.txt
  (cd benchmarks && timeout 60 python3 bench_host.py --shape $shape --recipes paper direct 2>&1 | grep "^|\|^#") >> $OUT/call_1_host.txt
done
cat $OUT/call_1_host.txt
timeout 150 python3 docs/runs/session14/host_costs.py 2>&1 | grep -v -i warn > $OUT/call_1_host_costs.txt; head -20 $OUT/call_1_host_costs.txt
cd benchmarks
timeout 200 python3 bench_e2e.py --shapes 1.3B --layers 2 4 --recipes bf16 paper direct 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/call_1_bench_e2e_1p3b.md
