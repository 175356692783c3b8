"""Achieved bandwidth of each fused quantization kernel vs a device copy measured in the same run.

    python benchmarks/bench_quant.py [--sweep]

Bytes counted are the fewest each job needs (bf16 inputs), so "of copy" is the share of the
copy's bandwidth reached (the issue's target: 0.85):
  row quantizer        read x (2 B) + FP8 (1 B) + codes (0.5 B) written + a scale per row
  grad quantizer       read dY (2 B) once + two FP8 operands (2 x 1 B); it reads dY twice
                       (amax pass, quantize pass), so 0.67 of copy is its DRAM ceiling unless
                       the second read hits L2
  codes -> FP8^T       read codes (0.5 B) + FP8 (1 B)
  DGE on dW            read dW (4 B) + W (2 B) + write dW (4 B)
  NVFP4/MXFP4 blocks   read x (2 B) + codes (0.5 B) + a scale byte per 16/32 elements (NVFP4 also
                       reads x once more for the tensor absmax, not counted)
The copy moves 2 B read + 2 B written per bf16 element. ``--sweep`` times the kernels' tile and
warp options (used to set the defaults; see NOTES.md).
"""

from __future__ import annotations

import argparse

import torch
from triton.testing import do_bench

from megatron_fp4.kernels.codes_to_fp8 import codes_to_fp8_t
from megatron_fp4.kernels.dge_grad import dge_scale_grad
from megatron_fp4.kernels.quantize_blocks import quantize_blocks
from megatron_fp4.kernels.quantize_grad import quantize_grad_folded
from megatron_fp4.kernels.quantize_rows import quantize_rows
from megatron_fp4.quantize import QuantSpec

SHAPES = [(8192, 2048), (8192, 4096), (16384, 5120), (8192, 11008), (16384, 13824)]
E5M2 = QuantSpec("fp8_e5m2", "tensor")
NVFP4, MXFP4 = QuantSpec("fp4", "nvfp4"), QuantSpec("fp4", "mxfp4")


def median_ms(fn) -> float:
    return do_bench(fn, return_mode="median")


def kernels(rows: int, k: int, **options) -> dict[str, tuple]:
    """name -> (function, bytes moved) for one shape."""
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    bounds = torch.tensor([-3.0, 3.0], device="cuda")
    column_scale = torch.rand(k, device="cuda") + 0.5
    row_scale = torch.rand(rows, device="cuda") + 0.5
    codes = quantize_rows(x).data
    grad_w = torch.randn(rows, k, device="cuda")
    scale = x.float().abs().amax(dim=1, keepdim=True) / 6
    elements = rows * k
    return {
        "row quantize": (lambda: quantize_rows(x, **options.get("row_options", {})), elements * 3.5 + rows * 4),
        "row quantize (7 compares)": (lambda: quantize_rows(x, index_by_rounding=False, **options.get("row_options", {})), elements * 3.5 + rows * 4),
        "row quantize+clamp": (lambda: quantize_rows(x, bounds, **options.get("row_options", {})), elements * 3.5 + rows * 4),
        "grad quantize (both)": (lambda: quantize_grad_folded(x, E5M2, E5M2, column_scale, row_scale, **options.get("grad_options", {})), elements * 4),
        "grad quantize (integer cast)": (lambda: quantize_grad_folded(x, E5M2, E5M2, column_scale, row_scale, hardware_cast=False), elements * 4),
        "codes -> fp8^T": (lambda: codes_to_fp8_t(codes), elements * 1.5),
        "DGE on dW": (lambda: dge_scale_grad(grad_w, x, scale, 5.0, 3.0), elements * 10),
        "NVFP4 blocks": (lambda: quantize_blocks(x, NVFP4, **options.get("block_options", {})), elements * (2 + 0.5 + 1 / 16)),
        "MXFP4 blocks": (lambda: quantize_blocks(x, MXFP4, **options.get("block_options", {})), elements * (2 + 0.5 + 1 / 32)),
    }


def main() -> None:
    names = list(kernels(16, 64))
    print(f"# {torch.cuda.get_device_name()}; share of device-copy bandwidth, same run")
    print("| shape | copy GB/s | " + " | ".join(names) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
    for rows, k in SHAPES:
        copy_gbs = rows * k * 4 / median_ms(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16).clone) / 1e6
        shares = [nbytes / median_ms(fn) / 1e6 / copy_gbs for fn, nbytes in kernels(rows, k).values()]
        print(f"| {rows}x{k} | {copy_gbs:.0f} | " + " | ".join(f"{share:.2f}" for share in shares) + " |", flush=True)
        torch.cuda.empty_cache()


def sweep(rows: int, k: int) -> None:
    """Tile/warp options of the row and gradient quantizers on one shape (for tuning)."""
    copy_gbs = rows * k * 4 / median_ms(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16).clone) / 1e6
    for block in (1024, 2048, 4096, 8192):
        for per_program in (1, 2, 4):
            if block * per_program > 16384:
                continue
            for warps in (4, 8, 16):
                fn, nbytes = kernels(rows, k, row_options={"block": block, "rows_per_program": per_program, "num_warps": warps})["row quantize"]
                print(f"  {rows}x{k} row quantize block {block:>5} rows/program {per_program} warps {warps:>2}: {nbytes / median_ms(fn) / 1e6 / copy_gbs:.2f} of copy")
    for tile in ((32, 64), (64, 64), (64, 128), (128, 64), (128, 128)):
        for warps in (4, 8):
            fn, nbytes = kernels(rows, k, grad_options={"tile": tile, "num_warps": warps})["grad quantize (both)"]
            print(f"  {rows}x{k} grad quantize tile {tile} warps {warps}: {nbytes / median_ms(fn) / 1e6 / copy_gbs:.2f} of copy")
    for tile in ((64, 64), (64, 256), (128, 256), (32, 512), (64, 512)):
        for warps in (4, 8):
            fn, nbytes = kernels(rows, k, grad_options={"amax_tile": tile, "amax_warps": warps})["grad quantize (both)"]
            print(f"  {rows}x{k} grad quantize amax tile {tile} warps {warps}: {nbytes / median_ms(fn) / 1e6 / copy_gbs:.2f} of copy")
    for blocks in (16, 32, 64, 128, 256):
        for name in ("NVFP4 blocks", "MXFP4 blocks"):
            fn, nbytes = kernels(rows, k, block_options={"blocks_per_program": blocks})[name]
            print(f"  {rows}x{k} {name} {blocks} blocks/program: {nbytes / median_ms(fn) / 1e6 / copy_gbs:.2f} of copy")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    main()
    if args.sweep:
        for shape in ((8192, 4096), (8192, 11008)):
            sweep(*shape)
