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
import triton  # noqa: E402
from megatron_fp4.kernels import quantize_grad as q  # noqa: E402

print("| shape | current scaling | delayed | delayed pass alone | finalisation alone (us, no fallback) | whole delayed call (us) |")
print("| --- | --- | --- | --- | --- | --- |")
for rows, k in ((8192, 4096), (16384, 5120), (8192, 11008), (16384, 13824)):
    copy = rows * k * 4 / b.median_ms(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16).clone) / 1e6
    ks = b.kernels(rows, k)
    shares = [nb / b.median_ms(f) / 1e6 / copy for name, (f, nb) in ks.items() if name in ("grad quantize (both)", "grad quantize (delayed)")]
    whole_us = b.median_ms(ks["grad quantize (delayed)"][0]) * 1e3
    # the two launches alone, on the production kernels and a steady state (history above the maxima)
    x, _, column_scale, row_scale = b._inputs(rows, k)[:4]
    state = new_grad_amax_state("cuda")
    quantize_grad_folded(x, E5M2, E5M2, column_scale, row_scale, amax_history=state, amax_margin=1)
    scales = torch.ones(8, device="cuda")
    dgrad, wgrad_t = torch.empty(rows, k, dtype=torch.uint8, device="cuda"), torch.empty(k, rows, dtype=torch.uint8, device="cuda")
    operands = (x, column_scale, row_scale, scales[0:1], scales[4:5], dgrad, wgrad_t)
    layout = dict(D_MANTISSA=2, D_BIAS=15, D_E4M3FN=False, W_MANTISSA=2, W_BIAS=15, W_E4M3FN=False, BM=q.BLOCK_M, BN=q.BLOCK_N, num_warps=q.NUM_WARPS,
                  HARDWARE_CAST=True, D_MAX=57344.0, W_MAX=57344.0, MARGIN_FACTOR=2.0)
    grid = (triton.cdiv(rows, q.BLOCK_M), triton.cdiv(k, q.BLOCK_N))
    pass_ms = b.median_ms(lambda: q._folded_quantize_kernel[grid](*operands, state, rows, k, k, DELAYED=True, **layout))
    state[2:5] = 0  # the pass's running maxima (below the history: no fallback)
    finalize_ms = b.median_ms(lambda: q._delayed_finalize_kernel[(min(grid[0] * grid[1], q.FINALIZE_PROGRAMS),)](*operands, state, rows, k, k, **layout))
    print(f"| {rows}x{k} | {shares[0]:.2f} | {shares[1]:.2f} | {rows * k * 4 / pass_ms / 1e6 / copy:.2f} | {finalize_ms * 1e3:.1f} | {whole_us:.1f} |", flush=True)
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
