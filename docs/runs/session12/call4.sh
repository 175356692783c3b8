# session 12, call 4: the word-packed grad quantizer's GPU mismatch, and its pass timed in CUDA-graph replay (no host gaps)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
python3 benchmarks/debug_grad_pack.py 2>&1 | grep -v Warning > $OUT/call_4_debug_grad_pack.txt
cut -c1-700 $OUT/call_4_debug_grad_pack.txt
