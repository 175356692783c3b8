"""Achieved bandwidth of each fused quantization kernel vs a device copy measured in the same run.

    python benchmarks/bench_quant.py [--sweep]

Bytes counted are the fewest each job needs (bf16 inputs), so "of copy" is the share of the
copy's bandwidth reached (the issue's target: 0.85):
  row quantizer        read x (2 B) + FP8 (1 B) + codes (0.5 B) written + a scale per row
  row inline (OCC)     read x (2 B) + the E4M3 operand (1 B) + a scale per row (`paper`'s default)
  grad quantizer       read dY (2 B) once + two FP8 operands (2 x 1 B); it reads dY twice
                       (amax pass, quantize pass), so 0.67 of copy is its DRAM ceiling unless
                       the second read hits L2; "(delayed)": delayed scaling, dY read once
                       (steady state: the fallback pass writes nothing)
  codes -> FP8^T       read codes (0.5 B) + FP8 (1 B)
  DGE on dW            read dW (4 B) + W (2 B) + write dW (4 B)
  NVFP4/MXFP4 blocks   read x (2 B) + codes (0.5 B) + a scale byte per 16/32 elements (NVFP4 also
                       reads x once more for the tensor absmax, not counted)
  NVFP4 recipe         the same bytes, for the recipe kernel's layouts: 16x16 weight tiles; 1x16
                       blocks with stochastic rounding (dgrad's dY); along the tokens with the RHT
                       and stochastic rounding (wgrad's dY^T), with the RHT only (wgrad's X^T);
                       MXFP4 along the tokens (`mxfp4`'s wgrad operands); "pairs": the same
                       along-the-tokens operands from BF16 token pairs (`quantize_tokens`, what
                       the linear uses for BF16 inputs); "+values": also writing the block GEMM's
                       BF16 operand (2 B more per element); ", values alone": the BF16 operand
                       without the codes (2 B + scales written), what the linear writes for the
                       operands its GEMMs consume at once (X in fprop, dY, dY^T); ", integer SR":
                       with the interpreter's integer stochastic rounding (before session 17)
The copy moves 2 B read + 2 B written per bf16 element. A second table times fc2's operand made
from the SwiGLU pre-activation, fused against megatron-core's SwiGLU then the quantizer; a third the
QKV / fc1 operand made from the residual stream with the RMSNorm fused, against torch's RMSNorm then
the quantizer. ``--values`` times the block quantizers writing the GEMM's BF16 operand against the
quantizer then the GEMM's decode pass. ``--sweep`` times the kernels' tile and
warp options (used to set the defaults; see NOTES.md); ``--graph`` times CUDA-graph replays (the
kernels without the host time an eager call may add: the graphed trainer's case).
"""

from __future__ import annotations

import argparse
import functools

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

from megatron_fp4.backward import new_grad_amax_state
from megatron_fp4.kernels.codes_to_fp8 import codes_to_fp8_t
from megatron_fp4.kernels.dge_grad import dge_scale_grad
from megatron_fp4.kernels.quantize_blocks import quantize_blocks
from megatron_fp4.kernels.quantize_grad import quantize_grad_folded
from megatron_fp4.hadamard import rht_matrix, rht_signs
from megatron_fp4.kernels.quantize_nvfp4 import quantize_nvfp4
from megatron_fp4.kernels.quantize_rows import quantize_rows, quantize_rows_inline
from megatron_fp4.kernels.quantize_tokens import quantize_along_tokens_bf16
from megatron_fp4.quantize import QuantSpec
from megatron_fp4.stochastic import new_seed

SHAPES = [(8192, 2048), (8192, 4096), (16384, 5120), (8192, 11008), (16384, 13824)]
E5M2 = QuantSpec("fp8_e5m2", "tensor")
NVFP4, MXFP4 = QuantSpec("fp4", "nvfp4"), QuantSpec("fp4", "mxfp4")


GRAPH = False  # --graph: time each kernel's CUDA-graph replay (no host gaps)


def median_ms(fn) -> float:
    """Median time of fn. Eager (default) includes any host time the GPU waits for, as an eager
    training step would; ``--graph`` replays fn's launches from a CUDA graph, as the graphed
    trainer does, so the number is the kernels' own (what "share of copy bandwidth" means)."""
    if GRAPH:
        return do_bench_cudagraph(fn, return_mode="median")
    return do_bench(fn, return_mode="median")


@functools.lru_cache(maxsize=1)
def _inputs(rows: int, k: int) -> tuple:
    """The tensors every kernel of one shape reads (made once per shape: a sweep times hundreds
    of settings on the same inputs)."""
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    bounds = torch.tensor([-3.0, 3.0], device="cuda")
    column_scale = torch.rand(k, device="cuda") + 0.5
    row_scale = torch.rand(rows, device="cuda") + 0.5
    codes = quantize_rows(x).data
    grad_w = torch.randn(rows, k, device="cuda")
    scale = x.float().abs().amax(dim=1, keepdim=True) / 6
    seed = new_seed(x.device)  # the Philox key of stochastic rounding
    rht = rht_matrix(1234, device=x.device)  # the 16x16 RHT for sign seed 1234
    history = new_grad_amax_state("cuda")  # delayed scaling's state: after the first call, steady (no fallback pass)
    quantize_grad_folded(x, E5M2, E5M2, column_scale, row_scale, amax_history=history)
    return x, bounds, column_scale, row_scale, codes, grad_w, scale, seed, rht, history


def _integer_sr(fn):
    """fn with the recipe kernel's stochastic rounding in integer operations (``DIRECTED_SR`` off)."""
    from megatron_fp4.kernels import quantize_nvfp4 as module

    def run():
        module.DIRECTED_SR = False
        try:
            return fn()
        finally:
            module.DIRECTED_SR = True

    return run


def kernels(rows: int, k: int, **options) -> dict[str, tuple]:
    """name -> (function, bytes moved) for one shape."""
    x, bounds, column_scale, row_scale, codes, grad_w, scale, seed, rht, history = _inputs(rows, k)
    elements = rows * k
    row_options = options.get("row_options", {})
    recipe_options = options.get("recipe_options", {})
    pair_options = options.get("pair_options", {})
    signs = rht_signs(1234, device=x.device)
    return {
        "row quantize": (lambda: quantize_rows(x, **row_options), elements * 3.5 + rows * 4),
        "row inline (OCC)": (lambda: quantize_rows_inline(x, bounds, **row_options), elements * 3 + rows * 4),
        "row quantize (7 compares)": (lambda: quantize_rows(x, index_by_rounding=False, **row_options), elements * 3.5 + rows * 4),
        "row quantize+clamp": (lambda: quantize_rows(x, bounds, **row_options), elements * 3.5 + rows * 4),
        "grad quantize (both)": (lambda: quantize_grad_folded(x, E5M2, E5M2, column_scale, row_scale, **options.get("grad_options", {})), elements * 4),
        "grad quantize (delayed)": (lambda: quantize_grad_folded(x, E5M2, E5M2, column_scale, row_scale, amax_history=history, **options.get("grad_options", {})), elements * 4),
        "grad quantize (integer cast)": (lambda: quantize_grad_folded(x, E5M2, E5M2, column_scale, row_scale, hardware_cast=False), elements * 4),
        "codes -> fp8^T": (lambda: codes_to_fp8_t(codes), elements * 1.5),
        "DGE on dW": (lambda: dge_scale_grad(grad_w, x, scale, 5.0, 3.0), elements * 10),
        "NVFP4 blocks": (lambda: quantize_blocks(x, NVFP4, **options.get("block_options", {})), elements * (2 + 0.5 + 1 / 16)),
        "MXFP4 blocks": (lambda: quantize_blocks(x, MXFP4, **options.get("block_options", {})), elements * (2 + 0.5 + 1 / 32)),
        "NVFP4 16x16 tiles": (lambda: quantize_nvfp4(x, tiles=True, **recipe_options), elements * (2 + 0.5 + 1 / 256)),
        "NVFP4 1x16 SR": (lambda: quantize_nvfp4(x, seed=seed, **recipe_options), elements * (2 + 0.5 + 1 / 16)),
        "NVFP4 tokens RHT SR": (lambda: quantize_nvfp4(x, along_tokens=True, rht=rht, seed=seed, **recipe_options), elements * (2 + 0.5 + 1 / 16)),
        "NVFP4 tokens RHT": (lambda: quantize_nvfp4(x, along_tokens=True, rht=rht, **recipe_options), elements * (2 + 0.5 + 1 / 16)),
        # the linear's forms of dgrad's dY and wgrad's dY^T: with the BF16 operand (2 B more written per element)
        "NVFP4 1x16 SR +values": (lambda: quantize_nvfp4(x, seed=seed, values=True, **recipe_options), elements * (4 + 0.5 + 1 / 16)),
        "NVFP4 tokens RHT SR +values": (lambda: quantize_nvfp4(x, along_tokens=True, rht=rht, seed=seed, values=True, **recipe_options), elements * (4 + 0.5 + 1 / 16)),
        # what the linear writes since session 17 for the operands its GEMMs consume at once: the BF16 values alone
        "NVFP4 blocks, values alone": (lambda: quantize_blocks(x, NVFP4, values=True, codes=False), elements * (4 + 1 / 16)),
        "MXFP4 blocks, values alone": (lambda: quantize_blocks(x, MXFP4, values=True, codes=False), elements * (4 + 1 / 32)),
        "NVFP4 1x16 SR, values alone": (lambda: quantize_nvfp4(x, seed=seed, values=True, codes=False, **recipe_options), elements * (4 + 1 / 16)),
        "NVFP4 tokens RHT SR, values alone": (lambda: quantize_nvfp4(x, along_tokens=True, rht=rht, seed=seed, values=True, codes=False, **recipe_options), elements * (4 + 1 / 16)),
        "pairs MXFP4 tokens, values alone": (lambda: quantize_along_tokens_bf16(x, block_format="mxfp4", values=True, codes=False, **pair_options), elements * (4 + 1 / 32)),
        # the same two SR operands with the integer rounding the interpreter runs (session 16's compiled form)
        "NVFP4 1x16 SR, values alone, integer SR": (_integer_sr(lambda: quantize_nvfp4(x, seed=seed, values=True, codes=False, **recipe_options)), elements * (4 + 1 / 16)),
        "NVFP4 tokens RHT SR, values alone, integer SR": (
            _integer_sr(lambda: quantize_nvfp4(x, along_tokens=True, rht=rht, seed=seed, values=True, codes=False, **recipe_options)), elements * (4 + 1 / 16),
        ),
        "MXFP4 tokens": (lambda: quantize_nvfp4(x, along_tokens=True, block_format="mxfp4", **recipe_options), elements * (2 + 0.5 + 1 / 32)),
        "pairs NVFP4 tokens RHT SR": (lambda: quantize_along_tokens_bf16(x, rht_signs=signs, seed=seed, **pair_options), elements * (2 + 0.5 + 1 / 16)),
        "pairs NVFP4 tokens RHT": (lambda: quantize_along_tokens_bf16(x, rht_signs=signs, **pair_options), elements * (2 + 0.5 + 1 / 16)),
        "pairs MXFP4 tokens": (lambda: quantize_along_tokens_bf16(x, block_format="mxfp4", **pair_options), elements * (2 + 0.5 + 1 / 32)),
    }


SWIGLU_SHAPES = [(8192, 5504), (8192, 11008), (8192, 13824)]  # fc2 inputs of LLaMA-2 1.3B / 7B / 13B


def swiglu_table() -> None:
    """fc2's operand from the SwiGLU pre-activation [tokens, 2 FFN]: fused (``swiglu=True``: the
    activation computed in the quantizer) vs megatron-core's compiled SwiGLU then the quantizer,
    same run. Fused bytes: read 4 B, write 1.5 B (rows) / 1 B (inline) per FFN element."""
    from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl

    print("\n| fc2 input (tokens x FFN) | operand | unfused us | fused us | speed-up | fused share of copy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rows, ffn in SWIGLU_SHAPES:
        pre = torch.randn(rows, 2 * ffn, device="cuda", dtype=torch.bfloat16)
        bounds = torch.tensor([-3.0, 3.0], device="cuda", dtype=torch.bfloat16)
        copy_gbs = pre.numel() * 4 / median_ms(pre.clone) / 1e6
        pairs = {
            "rows": (lambda: quantize_rows(bias_swiglu_impl(pre, None)), lambda: quantize_rows(pre, swiglu=True), 5.5),
            "inline (OCC)": (lambda: quantize_rows_inline(bias_swiglu_impl(pre, None), bounds), lambda: quantize_rows_inline(pre, bounds, swiglu=True), 5.0),
        }
        for name, (unfused, fused, bytes_per_element) in pairs.items():
            unfused_ms, fused_ms = median_ms(unfused), median_ms(fused)
            share = rows * ffn * bytes_per_element / fused_ms / 1e6 / copy_gbs
            print(f"| {rows}x{ffn} | {name} | {unfused_ms * 1e3:.0f} | {fused_ms * 1e3:.0f} | {unfused_ms / fused_ms:.2f}x | {share:.2f} |", flush=True)
        del pre
        torch.cuda.empty_cache()


NORM_SHAPES = [(8192, 2048), (8192, 4096), (8192, 5120)]  # QKV / fc1 inputs of LLaMA-2 1.3B / 7B / 13B


def norm_table() -> None:
    """The QKV / fc1 operand from the residual stream: fused (``rms_rstd`` then the quantizer
    computing the norm) vs torch's RMSNorm then the quantizer, same run. Fused bytes: read 2 B
    (statistics) + 2 B, write 1.5 B (rows) / 1 B (inline) per element."""
    from megatron_fp4.kernels.quantize_rows import rms_rstd

    print("\n| QKV/fc1 input (tokens x hidden) | operand | unfused us | fused us | speed-up | fused share of copy |")
    print("| --- | --- | --- | --- | --- | --- |")
    for rows, hidden in NORM_SHAPES:
        x = torch.randn(rows, hidden, device="cuda", dtype=torch.bfloat16)
        norm = torch.nn.RMSNorm(hidden, eps=1e-5, device="cuda", dtype=torch.bfloat16)
        bounds = torch.tensor([-3.0, 3.0], device="cuda", dtype=torch.bfloat16)
        copy_gbs = x.numel() * 4 / median_ms(x.clone) / 1e6
        with torch.no_grad():
            pairs = {
                "rows": (lambda: quantize_rows(norm(x)), lambda: quantize_rows(x, norm_weight=norm.weight, norm_rstd=rms_rstd(x, 1e-5)), 5.5),
                "inline (OCC)": (lambda: quantize_rows_inline(norm(x), bounds),
                                 lambda: quantize_rows_inline(x, bounds, norm_weight=norm.weight, norm_rstd=rms_rstd(x, 1e-5)), 5.0),
            }
            for name, (unfused, fused, bytes_per_element) in pairs.items():
                unfused_ms, fused_ms = median_ms(unfused), median_ms(fused)
                share = rows * hidden * bytes_per_element / fused_ms / 1e6 / copy_gbs
                print(f"| {rows}x{hidden} | {name} | {unfused_ms * 1e3:.0f} | {fused_ms * 1e3:.0f} | {unfused_ms / fused_ms:.2f}x | {share:.2f} |", flush=True)


def main(shapes=SHAPES, only: list[str] | None = None) -> None:
    """The table: each kernel's share of copy bandwidth per shape (``only``: the kernels whose
    names contain one of these strings)."""
    names = [name for name in kernels(16, 64) if not only or any(part in name for part in only)]
    print(f"# {torch.cuda.get_device_name()}; share of device-copy bandwidth, same run")
    print("| shape | copy GB/s | " + " | ".join(names) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in names) + " |")
    for rows, k in shapes:
        copy_gbs = rows * k * 4 / median_ms(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16).clone) / 1e6
        jobs = kernels(rows, k)
        shares = [jobs[name][1] / median_ms(jobs[name][0]) / 1e6 / copy_gbs for name in names]
        print(f"| {rows}x{k} | {copy_gbs:.0f} | " + " | ".join(f"{share:.2f}" for share in shares) + " |", flush=True)
        torch.cuda.empty_cache()


def values_table(shapes) -> None:
    """The block quantizers writing the GEMM's BF16 operand themselves (``values=True``) against
    the same quantizer then the block GEMM's decode pass (``decode_to_bf16``), same run: what an
    operand consumed at once costs before its GEMM either way."""
    from megatron_fp4.kernels.block_gemm import decode_to_bf16

    print("\n| shape | operand | quantize + decode us | quantize with BF16 values us | speed-up | BF16 values alone us | speed-up |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for rows, k in shapes:
        x, *_, seed, rht, _ = _inputs(rows, k)
        operands = {  # (values, codes) -> the operand
            "NVFP4 blocks (X)": lambda v, c=True: quantize_blocks(x, NVFP4, values=v, codes=c),
            "MXFP4 blocks (X, W)": lambda v, c=True: quantize_blocks(x, MXFP4, values=v, codes=c),
            "NVFP4 16x16 tiles (W)": lambda v, c=True: quantize_nvfp4(x, tiles=True, values=v, codes=c),
            "NVFP4 1x16 SR (dY)": lambda v, c=True: quantize_nvfp4(x, seed=seed, values=v, codes=c),
            "NVFP4 tokens RHT SR (dY^T)": lambda v, c=True: quantize_nvfp4(x, along_tokens=True, rht=rht, seed=seed, values=v, codes=c),
            "pairs MXFP4 tokens (dY^T)": lambda v, c=True: quantize_along_tokens_bf16(x, block_format="mxfp4", values=v, codes=c),
        }
        for name, quantize_with in operands.items():
            separate = median_ms(lambda: decode_to_bf16(quantize_with(False)))
            fused = median_ms(lambda: quantize_with(True))
            alone = median_ms(lambda: quantize_with(True, False))
            print(f"| {rows}x{k} | {name} | {separate * 1e3:.0f} | {fused * 1e3:.0f} | {separate / fused:.2f}x | {alone * 1e3:.0f} | {separate / alone:.2f}x |", flush=True)
        torch.cuda.empty_cache()


def sweep(rows: int, k: int, families: tuple[str, ...] = ("rows", "grad", "blocks")) -> None:
    """Grid, pipelining and tile options of the kernels on one shape (for tuning the defaults)."""
    copy_gbs = rows * k * 4 / median_ms(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16).clone) / 1e6

    def report(name: str, what: str, **options) -> None:
        fn, nbytes = kernels(rows, k, **options)[name]
        print(f"  {rows}x{k} {name} {what}: {nbytes / median_ms(fn) / 1e6 / copy_gbs:.2f} of copy", flush=True)

    whole = triton.next_power_of_2(k)
    if "rows" in families:
        for name in ("row quantize", "row inline (OCC)"):
            for warps in (2, 4, 8, 16):
                report(name, f"whole row, warps {warps}", row_options={"block": whole, "num_warps": warps})
            for block in (1024, 2048, 4096):
                if block < k:
                    for warps in (4, 8):
                        report(name, f"two passes of {block}, warps {warps}", row_options={"block": block, "num_warps": warps})
    if "swiglu" in families:  # the fc2 operand from the pre-activation [rows, 2k] (fused SwiGLU)
        pre = torch.randn(rows, 2 * k, device="cuda", dtype=torch.bfloat16)
        bounds = torch.tensor([-3.0, 3.0], device="cuda", dtype=torch.bfloat16)
        for name, fn, bytes_per_element in (("rows", quantize_rows, 5.5), ("inline", lambda p, **o: quantize_rows_inline(p, bounds, **o), 5.0)):
            for warps in (4, 8, 16):
                ms = median_ms(lambda: fn(pre, swiglu=True, num_warps=warps))
                print(f"  {rows}x{k} SwiGLU -> {name} whole row, warps {warps}: {rows * k * bytes_per_element / ms / 1e6 / copy_gbs:.2f} of copy", flush=True)
        del pre
    if "grad" in families:
        for tile in ((64, 128), (128, 64), (64, 64), (32, 128)):
            for warps in (4, 8):
                options = {"tile": tile, "num_warps": warps}
                report("grad quantize (both)", f"quantize tile {tile} warps {warps}", grad_options=options)
                report("grad quantize (delayed)", f"tile {tile} warps {warps}", grad_options=options)
        for tile in ((64, 256), (32, 512)):
            for warps in (4, 8):
                report("grad quantize (both)", f"amax tile {tile} warps {warps}", grad_options={"amax_tile": tile, "amax_warps": warps})
    if "recipe" in families:  # the recipe kernel's program tile, per layout (rows, columns of O, warps)
        for name in ("MXFP4 tokens", "NVFP4 tokens RHT", "NVFP4 tokens RHT SR +values", "NVFP4 1x16 SR +values", "NVFP4 16x16 tiles"):
            for tile in ((64, 64, 4), (256, 32, 4), (128, 64, 4), (64, 128, 4), (32, 256, 4), (256, 64, 8), (128, 32, 4)):
                report(name, f"tile {tile}", recipe_options={"tile": tile})
    if "pairs" in families:  # the token-pair kernel's program tile (tokens, columns, warps)
        for name in ("pairs MXFP4 tokens", "pairs NVFP4 tokens RHT", "pairs NVFP4 tokens RHT SR"):
            for tile in ((32, 128, 1), (32, 256, 1), (16, 256, 1), (32, 128, 2), (32, 64, 1), (64, 256, 2), (16, 512, 2)):
                if "MXFP4" in name and tile[0] < 32:
                    continue
                report(name, f"tile {tile}", pair_options={"tile": tile})
    if "blocks" in families:
        for blocks in (32, 64, 128, 256):
            for name in ("NVFP4 blocks", "MXFP4 blocks"):
                for per_sm in (2, 4, 8):
                    for prefetch in (True, False):
                        report(name, f"{blocks} blocks/item {per_sm}/SM prefetch {prefetch}", block_options={"blocks_per_program": blocks, "programs_per_sm": per_sm, "prefetch": prefetch})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-shapes", nargs="+", default=["8192x4096", "8192x11008"], help="ROWSxK shapes to sweep")
    parser.add_argument("--sweep-families", nargs="+", default=["rows", "grad", "blocks"], choices=["rows", "swiglu", "grad", "blocks", "recipe", "pairs"])
    parser.add_argument("--no-table", action="store_true", help="only the sweep")
    parser.add_argument("--graph", action="store_true", help="time CUDA-graph replays (the kernels alone, no host time)")
    parser.add_argument("--shapes", nargs="+", help="ROWSxK shapes of the table (default: the LLaMA shapes)")
    parser.add_argument("--only", nargs="+", help="the table's kernels whose names contain one of these; no fused-input tables")
    parser.add_argument("--values", action="store_true", help="only the table of the block quantizers writing BF16 operands against quantize + decode")
    args = parser.parse_args()
    GRAPH = args.graph
    if args.values:
        values_table([tuple(int(v) for v in shape.split("x")) for shape in args.shapes] if args.shapes else SHAPES)
    elif not args.no_table:
        main([tuple(int(v) for v in shape.split("x")) for shape in args.shapes] if args.shapes else SHAPES, args.only)
        if not args.only:
            swiglu_table()
            norm_table()
    if args.sweep:
        for shape in args.sweep_shapes:
            sweep(*(int(v) for v in shape.split("x")), families=tuple(args.sweep_families))
