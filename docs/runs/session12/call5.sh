# session 12, call 5: GPU tests of the final grad quantizer; bench_quant timed in CUDA-graph replay
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py tests/test_gemm_backends.py tests/test_fused_inputs.py > $OUT/call_5_gpu_tests.txt 2>&1; tail -3 $OUT/call_5_gpu_tests.txt
timeout 240 python3 benchmarks/bench_quant.py --graph 2>&1 | grep -v -i warn > $OUT/call_5_bench_quant_graph.txt
cut -c1-400 $OUT/call_5_bench_quant_graph.txt
