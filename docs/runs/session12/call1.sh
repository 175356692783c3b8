# session 12, call 1: where the grad quantizer's single pass loses bandwidth (diagnostic variants)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total --format=csv > $OUT/call_1_device.txt
python3 benchmarks/diag_grad_quant.py --shapes 8192x4096 8192x11008 16384x5120 2>&1 | grep -v Warning > $OUT/call_1_diag_grad_quant.txt
tail -c 6000 $OUT/call_1_diag_grad_quant.txt
