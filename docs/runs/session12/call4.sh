# session 12, call 4: GPU tests (grad quantizer default pack 1); where the word-packed grad quantizer differs on the GPU; the pass timed in CUDA-graph replay
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py tests/test_gemm_backends.py tests/test_fused_inputs.py > $OUT/call_4_gpu_tests.txt 2>&1; tail -4 $OUT/call_4_gpu_tests.txt
timeout 300 python3 benchmarks/debug_grad_pack.py 2>&1 | grep -v Warning > $OUT/call_4_debug_grad_pack.txt
cut -c1-400 $OUT/call_4_debug_grad_pack.txt
