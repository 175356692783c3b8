"""Session 13: the delayed gradient quantizer's tile and warps in CUDA-graph replay (share of copy,
bench_quant's bytes), at two LLaMA shapes; session 11-12's sweeps were eager (host time) or two
settings only."""

import sys

import torch

sys.path.insert(0, "benchmarks")
import bench_quant as b  # noqa: E402
from megatron_fp4.backward import new_grad_amax_state  # noqa: E402
from megatron_fp4.kernels.quantize_grad import quantize_grad_folded  # noqa: E402
from megatron_fp4.quantize import QuantSpec  # noqa: E402

b.GRAPH = True
E5M2 = QuantSpec("fp8_e5m2", "tensor")
SETTINGS = [(64, 128, 4), (64, 128, 8), (32, 128, 2), (32, 128, 4), (128, 128, 8), (32, 256, 4), (64, 256, 8), (128, 64, 4), (64, 64, 2), (64, 64, 4), (16, 256, 4)]
print("| shape | " + " | ".join(f"{m}x{n}/{w}" for m, n, w in SETTINGS) + " |")
print("| --- " * (len(SETTINGS) + 1) + "|")
for rows, k in ((16384, 5120), (8192, 11008)):
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    column, row = torch.rand(k, device="cuda") + 0.5, torch.rand(rows, device="cuda") + 0.5
    copy = rows * k * 4 / b.median_ms(x.clone) / 1e6
    cells = []
    for m, n, w in SETTINGS:
        state = new_grad_amax_state("cuda")
        try:
            quantize_grad_folded(x, E5M2, E5M2, column, row, tile=(m, n), num_warps=w, amax_history=state, amax_margin=1)
            ms = b.median_ms(lambda: quantize_grad_folded(x, E5M2, E5M2, column, row, tile=(m, n), num_warps=w, amax_history=state, amax_margin=1))
            cells.append(f"{rows * k * 4 / ms / 1e6 / copy:.2f}")
        except Exception as error:  # a setting that does not compile (shared memory, registers): reported
            cells.append(type(error).__name__)
    print(f"| {rows}x{k} | " + " | ".join(cells) + " |", flush=True)
