#!/usr/bin/env bash
# Session 13, call 1: where an eager FP4 linear's host time goes now (bench_host + cProfile), and
# the eager vs graphed end-to-end step at the 1.3B / 7B shapes (the eager gap the host time makes).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv > $OUT/call_1_device.txt
cd benchmarks
timeout 120 python3 bench_host.py --recipes paper direct paper-no-occ --cprofile paper --cprofile-rows 45 2>&1 | grep -v -i "warn" > $OUT/call_1_host_paper.txt
timeout 90 python3 bench_host.py --recipes direct --cprofile direct --cprofile-rows 45 2>&1 | grep -v -i "warn" > $OUT/call_1_host_direct.txt
timeout 90 python3 bench_host.py --shape 8192 2048 2048 --recipes paper direct 2>&1 | grep "^|" > $OUT/call_1_host_1p3b.txt
head -8 $OUT/call_1_host_paper.txt; cat $OUT/call_1_host_1p3b.txt
timeout 330 python3 bench_e2e.py --shapes 1.3B --layers 2 4 --recipes bf16 paper direct paper-graph direct-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/call_1_bench_e2e_1p3b.md
