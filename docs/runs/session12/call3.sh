# session 12, call 3: grad quantizer with word-packed transposes and the trimmed delayed wrapper: GPU tests, bench_quant table and grad sweep
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py tests/test_gemm_backends.py tests/test_fused_inputs.py > $OUT/call_3_gpu_tests.txt 2>&1; tail -3 $OUT/call_3_gpu_tests.txt
python3 benchmarks/bench_quant.py --sweep --sweep-families grad --sweep-shapes 8192x11008 16384x5120 8192x4096 2>&1 | grep -v Warning > $OUT/call_3_bench_quant.txt
cat $OUT/call_3_bench_quant.txt | cut -c1-400
