#!/usr/bin/env bash
# Session 13, call 5: the GPU tests of the final delayed-scaling code after the review (the finalisation derives its limits; the margin only specializes delayed kernels;
# trainer's log line; graphed training with delayed scales against eager).
set -o pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
timeout 400 python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py tests/test_gemm_backends.py tests/test_fused_inputs.py tests/training/test_cuda_graph_training.py "tests/training/test_pretrain.py::test_delayed_scaling_fallbacks_are_logged_per_interval" > $OUT/call_5_gpu_tests.txt 2>&1; tail -4 $OUT/call_5_gpu_tests.txt
