#!/usr/bin/env bash
# Session 17, call 1 (device starts were refused for ~20 min, so one call holds what two would): GPU tests of the
# block quantizers (directed-rounding SR, BF16 values alone, hardware FP8 block scales) and of the linear, backends,
# CUDA graphs, megatron layers and graphed / fused trainer; bench_quant of the linear's operands (graph replays);
# bench_linear nvfp4/mxfp4 HEAD (.before = 73f25f2) vs new in one call.
set -o pipefail
export PYTHONUNBUFFERED=1
REPO=$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$REPO
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee $OUT/call_1_device.txt
timeout 250 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernel_tests/test_e2m1_stochastic_directed.py tests/kernel_tests/test_bf16_operands.py \
  tests/kernel_tests/test_quantize_nvfp4.py tests/kernel_tests/test_quantize_blocks.py tests/kernel_tests/test_quantize_tokens.py tests/kernel_tests/test_block_gemm.py \
  tests/test_linear.py tests/test_nvfp4_recipe.py tests/test_gemm_backends.py \
  tests/test_cuda_graphs.py tests/mcore/test_layers.py tests/training/test_cuda_graph_training.py tests/training/test_fusion_training.py 2>&1 | tail -15 | tee $OUT/call_1_gpu_tests.txt
cd /tmp
timeout 45 python3 $REPO/benchmarks/bench_quant.py --graph --shapes 8192x12288 --only "SR" "values alone" "NVFP4 blocks" "MXFP4 blocks" "pairs MXFP4" 2>&1 | grep -v -i warn | tee $OUT/call_1_bench_quant.txt
echo "== .before"; PYTHONPATH=/tmp/site:$REPO/.before timeout 75 python3 $REPO/.before/benchmarks/bench_linear.py --models 7B 13B --recipes nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_1_bench_linear_before.txt
echo "== new"; timeout 75 python3 $REPO/benchmarks/bench_linear.py --models 7B 13B --recipes nvfp4 mxfp4 2>&1 | grep -v -i "warn\|run_backward" | tee $OUT/call_1_bench_linear.txt
