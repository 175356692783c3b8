# session 12, call 6: after the review (shared load helper, one amax->scale helper): GPU tests, grad quantizer graph timing
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
python3 -m pytest -q -p no:cacheprovider -p no:warnings tests/kernels/test_backward_kernels.py tests/test_delayed_grad_scaling.py tests/test_cuda_graphs.py tests/test_linear.py tests/test_gemm_backends.py tests/test_fused_inputs.py > $OUT/call_6_gpu_tests.txt 2>&1; tail -2 $OUT/call_6_gpu_tests.txt
timeout 90 python3 -c "
import sys; sys.path.insert(0, 'benchmarks'); import bench_quant as b; b.GRAPH = True
from triton.testing import do_bench_cudagraph
import torch
for rows, k in ((8192, 4096), (16384, 5120), (8192, 11008), (16384, 13824)):
    copy = rows * k * 4 / b.median_ms(torch.randn(rows, k, device='cuda', dtype=torch.bfloat16).clone) / 1e6
    ks = b.kernels(rows, k)
    print(rows, k, ' '.join(f'{n}: {nb / b.median_ms(f) / 1e6 / copy:.2f}' for n, (f, nb) in ks.items() if n.startswith('grad quantize (') and 'integer' not in n), flush=True)
    b._inputs.cache_clear(); torch.cuda.empty_cache()
" 2>&1 | grep -v -i warn | tee $OUT/call_6_grad_graph.txt
