"""Session 13: the folded gradient quantizer in CUDA-graph replay (share of copy, bench_quant's
bytes) and the eager wrapper's host time per call (the wall time of 200 back-to-back calls,
no synchronisation inside: the GPU finishes each call faster than Python issues the next only at
small shapes, so the host time is timed at 1024x1024)."""

import sys
import time

import torch

sys.path.insert(0, "benchmarks")
import bench_quant as b  # noqa: E402
from megatron_fp4.backward import new_grad_amax_state  # noqa: E402
from megatron_fp4.kernels.quantize_grad import quantize_grad_folded  # noqa: E402
from megatron_fp4.quantize import QuantSpec  # noqa: E402

b.GRAPH = True
E5M2 = QuantSpec("fp8_e5m2", "tensor")
print("| shape | current scaling | delayed |")
print("| --- | --- | --- |")
for rows, k in ((8192, 4096), (16384, 5120), (8192, 11008), (16384, 13824)):
    copy = rows * k * 4 / b.median_ms(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16).clone) / 1e6
    ks = b.kernels(rows, k)
    shares = [nb / b.median_ms(f) / 1e6 / copy for name, (f, nb) in ks.items() if name in ("grad quantize (both)", "grad quantize (delayed)")]
    print(f"| {rows}x{k} | {shares[0]:.2f} | {shares[1]:.2f} |", flush=True)
    b._inputs.cache_clear()
    torch.cuda.empty_cache()

g = torch.randn(1024, 1024, device="cuda", dtype=torch.bfloat16)
column, row = torch.rand(1024, device="cuda") + 0.5, torch.rand(1024, device="cuda") + 0.5
state = new_grad_amax_state("cuda")
for name, options in (("current", {}), ("delayed", {"amax_history": state})):
    for _ in range(10):
        quantize_grad_folded(g, E5M2, E5M2, column, row, **options)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(200):
        quantize_grad_folded(g, E5M2, E5M2, column, row, **options)
    host = (time.perf_counter() - start) / 200 * 1e6
    torch.cuda.synchronize()
    print(f"eager host time per call, {name}: {host:.0f} us", flush=True)
