#!/usr/bin/env bash
# Session 16, call 6: the final code (dgrad's operand dropped before wgrad's is made, in both autograd functions):
# GPU tests of the linear, the megatron layers, CUDA graphs and the graphed/fused trainer; the 13B graphed step
# with nvfp4 and mxfp4 against BF16.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
timeout 300 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernel_tests/test_bf16_operands.py tests/test_linear.py tests/test_cuda_graphs.py \
  tests/mcore/test_layers.py tests/training/test_cuda_graph_training.py tests/training/test_fusion_training.py 2>&1 | tail -8 | tee $OUT/call_6_gpu_tests.txt
cd $REPO/benchmarks
timeout 250 python3 bench_e2e.py --shapes 13B --layers 2 4 --steps 6 --recipes bf16 mxfp4-graph nvfp4-graph 2>&1 | grep "^|\|^device\|^Marginal\|rror" | tee $OUT/call_6_bench_e2e_13B.md
