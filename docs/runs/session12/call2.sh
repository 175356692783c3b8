# session 12, call 2: single-pass grad quantizer designs (flat maxima, unmasked, persistent cp.async / TMA pipelined loads); GPU tests of the flat maxima
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py > $OUT/call_2_gpu_tests.txt 2>&1; tail -3 $OUT/call_2_gpu_tests.txt
python3 benchmarks/diag_grad_quant.py --shapes 8192x11008 16384x5120 8192x4096 2>&1 | grep -v Warning > $OUT/call_2_diag_grad_quant.txt
tail -c 9000 $OUT/call_2_diag_grad_quant.txt
