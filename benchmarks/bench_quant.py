"""Achieved bandwidth of the fused FP4 quantize kernel vs a device copy measured in the same run.

    python benchmarks/bench_quant.py

Bytes counted are the fewest the job needs: read x once (bf16: 2 B/element), write the FP8 form
(1 B), the packed codes (0.5 B) and one fp32 scale per row. The copy moves 2 B read + 2 B written.
"""

from __future__ import annotations

import torch
from triton.testing import do_bench

from megatron_fp4.kernels.quantize_rows import quantize_rows

SHAPES = [(8192, 2048), (8192, 4096), (16384, 5120), (8192, 11008), (16384, 13824)]


def sweep(rows: int, k: int) -> None:
    """Block size / warps variants of the kernel on one shape (for tuning; see NOTES.md)."""
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    copy_ms = do_bench(lambda: x.clone(), return_mode="median")
    for block in (1024, 4096, 16384):
        for warps in (4, 8, 16):
            ms = do_bench(lambda: quantize_rows(x, block=block, num_warps=warps), return_mode="median")
            print(f"  {rows}x{k} block {block:>5} warps {warps:>2}: {copy_ms / ms * 3.5 / 4:.2f} of copy")


def main() -> None:
    print(f"{'shape':>16} {'copy GB/s':>10} {'quant GB/s':>11} {'quant/copy':>11} {'quant+clamp/copy':>17}")
    for rows, k in SHAPES:
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        bounds = torch.tensor([-3.0, 3.0], device="cuda")
        copy_ms = do_bench(lambda: x.clone(), return_mode="median")
        quant_ms = do_bench(lambda: quantize_rows(x), return_mode="median")
        clamp_ms = do_bench(lambda: quantize_rows(x, bounds), return_mode="median")
        copy_gbs = rows * k * 4 / copy_ms / 1e6
        quant_bytes = rows * k * (2 + 1 + 0.5) + rows * 4
        quant_gbs, clamp_gbs = quant_bytes / quant_ms / 1e6, quant_bytes / clamp_ms / 1e6
        print(f"{f'{rows}x{k}':>16} {copy_gbs:>10.0f} {quant_gbs:>11.0f} {quant_gbs / copy_gbs:>11.2f} {clamp_gbs / copy_gbs:>17.2f}")


if __name__ == "__main__":
    import sys

    main()
    if "--sweep" in sys.argv:
        sweep(8192, 4096)
        sweep(8192, 11008)
