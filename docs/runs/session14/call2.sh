#!/usr/bin/env bash
# Session 14, call 2: the axes-maxima grad quantizer pass (bit-equality, graph timing);
# bench_linear for every recipe at 7B/13B; the 1.3B graphed step with the new OCC bounds.
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
timeout 120 python3 docs/runs/session14/grad_axes.py 2>&1 | grep -v -i warn | tee $OUT/call_2_grad_axes.txt
cd benchmarks
timeout 200 python3 bench_linear.py --models 7B 13B --recipes paper direct nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_2_bench_linear.txt
timeout 220 python3 bench_e2e.py --shapes 1.3B --layers 2 4 --recipes bf16 paper-graph direct-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/call_2_bench_e2e_1p3b_graph.md
