"""Where the folded gradient quantizer's single pass loses its bandwidth (issue 14, item 5).

    python benchmarks/diag_grad_quant.py [--shapes 8192x11008 16384x5120 8192x4096]

The production kernel (``megatron_fp4.kernels.quantize_grad``) reads dY, writes two FP8 operands
(one transposed) and, with delayed scaling, the tile's two maxima. This script times, in one run
against a device copy, the production passes alone and design variants of the one pass, each a
diagnostic kernel defined here (NOTES.md, session 12, calls 1-2, has the readings):

  copy-tile            a Triton bf16 tile copy with the quantizer's tiling (the tiling's ceiling)
  quantize / delayed pass   the production kernel without / with the tile's maxima
  unmasked             one tile per program without masks (even shapes), maxima 0 (none) or 2
                       (reduced over the flattened tile)
  persistent           programs walking the tiles with the loads pipelined (``tl.range`` stages;
                       cp.async or TMA descriptor loads), running maxima in registers
and checks that each variant's operands and maxima equal the production kernel's.
Bytes counted as in bench_quant: dY read once (2 B) + two FP8 operands (2 x 1 B) per element.
The first call's TMA-store and per-row "cheap maxima" variants (slower) are no longer here.
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from megatron_fp4.backward import new_grad_amax_state
from megatron_fp4.kernels.fp8_rounding import fp8_cast
from megatron_fp4.kernels.quantize_grad import _folded_quantize_kernel, _tile_absmax
from megatron_fp4.kernels.quantize_rows import _max_keeping_nan


@triton.jit
def _copy_tile_kernel(g_ptr, out_ptr, M, N, BM: tl.constexpr, BN: tl.constexpr):
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    offsets = rows[:, None].to(tl.int64) * N + cols[None, :]
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(out_ptr + offsets, tl.load(g_ptr + offsets, mask=mask), mask=mask)


@triton.jit
def _flat_maxima(dgrad, wgrad):
    """(max |dgrad|, max |wgrad|), each reduced over the tile flattened in any order (in-thread
    first, then one shuffle tree and one cross-warp step), not row by row."""
    return _tile_absmax(dgrad), _tile_absmax(wgrad)


@triton.jit
def _pipelined_tile(g, rows, cols, column_scale_ptr, row_scale_ptr, d_inverse, w_inverse, dgrad_ptr, wgrad_t_ptr, M, N):
    """Both operands of an even tile (no masks); returns the tile's (max |dgrad|, max |wgrad|)."""
    column_scale = tl.load(column_scale_ptr + cols)
    row_scale = tl.load(row_scale_ptr + rows)
    dgrad = g.to(tl.float32) * column_scale[None, :]
    wgrad = tl.trans(g).to(tl.float32) * row_scale[None, :]
    byte = fp8_cast(dgrad * d_inverse, 2, 15, False, True)
    tl.store(dgrad_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], byte.to(tl.uint8))
    byte = fp8_cast(wgrad * w_inverse, 2, 15, False, True)
    tl.store(wgrad_t_ptr + cols[:, None].to(tl.int64) * M + rows[None, :], byte.to(tl.uint8))
    return _flat_maxima(dgrad, wgrad)


@triton.jit
def _persistent_kernel(g_ptr, g_desc, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, partial_ptr, M, N,
                       BM: tl.constexpr, BN: tl.constexpr, MAXIMA: tl.constexpr, PROGRAMS: tl.constexpr, STAGES: tl.constexpr, TMA_LOAD: tl.constexpr):
    """Even shapes only (no masks): tiles walked by PROGRAMS programs, the loads pipelined
    STAGES deep (TMA_LOAD: the copy engine; else cp.async), stores from registers; MAXIMA 2:
    running maxima in registers, one partial pair per program."""
    d_inverse = tl.math.div_rn(1.0, tl.load(dgrad_scale_ptr))
    w_inverse = tl.math.div_rn(1.0, tl.load(wgrad_scale_ptr))
    tiles_n = N // BN
    d_max = tl.zeros((), dtype=tl.float32)
    w_max = tl.zeros((), dtype=tl.float32)
    for tile in tl.range(tl.program_id(0), (M // BM) * tiles_n, PROGRAMS, num_stages=STAGES):
        rows = (tile // tiles_n) * BM + tl.arange(0, BM)
        cols = (tile % tiles_n) * BN + tl.arange(0, BN)
        if TMA_LOAD:
            g = g_desc.load([(tile // tiles_n) * BM, (tile % tiles_n) * BN])
        else:
            g = tl.load(g_ptr + rows[:, None].to(tl.int64) * N + cols[None, :])
        d, w = _pipelined_tile(g, rows, cols, column_scale_ptr, row_scale_ptr, d_inverse, w_inverse, dgrad_ptr, wgrad_t_ptr, M, N)
        if MAXIMA == 2:
            d_max = _max_keeping_nan(d_max, d)
            w_max = _max_keeping_nan(w_max, w)
    if MAXIMA == 2:
        tl.store(partial_ptr + tl.program_id(0) * 2, d_max)
        tl.store(partial_ptr + tl.program_id(0) * 2 + 1, w_max)


@triton.jit
def _flat_kernel(g_ptr, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, partial_ptr, M, N,
                 BM: tl.constexpr, BN: tl.constexpr, MAXIMA: tl.constexpr):
    """One tile per program, even shapes (no masks), flattened maxima (MAXIMA 2)."""
    tile = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    g = tl.load(g_ptr + rows[:, None].to(tl.int64) * N + cols[None, :])
    d, w = _pipelined_tile(g, rows, cols, column_scale_ptr, row_scale_ptr, tl.math.div_rn(1.0, tl.load(dgrad_scale_ptr)),
                           tl.math.div_rn(1.0, tl.load(wgrad_scale_ptr)), dgrad_ptr, wgrad_t_ptr, M, N)
    if MAXIMA == 2:
        tl.store(partial_ptr + tile * 2, d)
        tl.store(partial_ptr + tile * 2 + 1, w)

def main() -> None:
    from triton.tools.tensor_descriptor import TensorDescriptor

    from megatron_fp4.kernels.quantize_grad import quantize_grad_folded
    from megatron_fp4.quantize import QuantSpec

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=["8192x4096", "8192x11008", "16384x5120"])
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    e5m2 = QuantSpec("fp8_e5m2", "tensor")
    print(f"# {torch.cuda.get_device_name()}; share of device-copy bandwidth (4 B per element counted), same run")
    for shape in args.shapes:
        m, n = (int(v) for v in shape.split("x"))
        g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
        column_scale = torch.rand(n, device="cuda") + 0.5
        row_scale = torch.rand(m, device="cuda") + 0.5
        d_scale = torch.full((1, 1), 0.01, device="cuda")
        w_scale = torch.full((1, 1), 0.01, device="cuda")
        dgrad = torch.empty(m, n, dtype=torch.uint8, device="cuda")
        wgrad_t = torch.empty(n, m, dtype=torch.uint8, device="cuda")
        out = torch.empty_like(g)
        history = new_grad_amax_state("cuda")
        quantize_grad_folded(g, e5m2, e5m2, column_scale, row_scale, amax_history=history)
        copy_gbs = m * n * 4 / do_bench(g.clone, return_mode="median") / 1e6
        rows = []

        def timed(name, fn, nbytes=m * n * 4):
            ms = do_bench(fn, return_mode="median")
            rows.append((name, ms * 1e3, nbytes / ms / 1e6 / copy_gbs))

        def check(name, launch):
            """The variant's operands and maxima equal the production delayed pass's."""
            dgrad.zero_(), wgrad_t.zero_()
            maxima = launch()
            same = torch.equal(reference[0], dgrad) and torch.equal(reference[1], wgrad_t)
            same_max = maxima is None or torch.equal(maxima.reshape(-1, 2).amax(0), reference[2])
            print(f"  {shape} {name}: operands equal {same}, maxima equal {same_max}", flush=True)

        timed("quantize_grad_folded current scaling (3 launches)", lambda: quantize_grad_folded(g, e5m2, e5m2, column_scale, row_scale))
        timed("quantize_grad_folded delayed (2 launches)", lambda: quantize_grad_folded(g, e5m2, e5m2, column_scale, row_scale, amax_history=history))
        for bm, bn, warps in ((64, 128, 4), (64, 64, 4), (128, 64, 4), (32, 128, 4), (64, 128, 8)):
            grid = (m // bm, n // bn)
            tiles = grid[0] * grid[1]
            partial = torch.empty(tiles, 2, device="cuda")
            tag = f"{bm}x{bn}/{warps}"
            production = dict(D_MANTISSA=2, D_BIAS=15, D_E4M3FN=False, W_MANTISSA=2, W_BIAS=15, W_E4M3FN=False, BM=bm, BN=bn,
                              HARDWARE_CAST=True, D_MAX=57344.0, W_MAX=57344.0, MARGIN_FACTOR=1.0, num_warps=warps)
            state = new_grad_amax_state("cuda")  # the delayed pass's history (0: scales 1) and running maxima
            operands = (g, column_scale, row_scale, d_scale, w_scale, dgrad, wgrad_t, state, m, n, n)
            _folded_quantize_kernel[grid](*operands, DELAYED=True, **production)
            maxima_reference = state[2:4].clone()
            _folded_quantize_kernel[grid](*operands, DELAYED=False, **production)  # the scales the variants use
            reference = (dgrad.clone(), wgrad_t.clone(), maxima_reference)
            timed(f"copy-tile {tag}", lambda: _copy_tile_kernel[grid](g, out, m, n, BM=bm, BN=bn, num_warps=warps))
            timed(f"quantize pass {tag}", lambda: _folded_quantize_kernel[grid](*operands, DELAYED=False, **production))
            timed(f"delayed pass (flat maxima) {tag}", lambda: _folded_quantize_kernel[grid](*operands, DELAYED=True, **production))
            flat = (g, column_scale, row_scale, d_scale, w_scale, dgrad, wgrad_t, partial, m, n)
            for maxima in (0, 2):
                timed(f"unmasked one tile/program maxima {maxima} {tag}", lambda: _flat_kernel[grid](*flat, BM=bm, BN=bn, MAXIMA=maxima, num_warps=warps))
            check(f"unmasked {tag}", lambda: (_flat_kernel[grid](*flat, BM=bm, BN=bn, MAXIMA=2, num_warps=warps), partial)[1])
            g_desc = TensorDescriptor.from_tensor(g, [bm, bn])
            for tma in ((False, True) if (bm, bn, warps) in ((64, 128, 4), (64, 64, 4)) else ()):
                for per_sm in (2, 3):
                    for stages in (2, 3, 4):
                        programs = min(sms * per_sm, tiles)
                        launch = lambda: _persistent_kernel[(programs,)](g, g_desc, column_scale, row_scale, d_scale, w_scale, dgrad, wgrad_t, partial, m, n,
                                                                         BM=bm, BN=bn, MAXIMA=2, PROGRAMS=programs, STAGES=stages, TMA_LOAD=tma, num_warps=warps)
                        try:
                            timed(f"persistent {'TMA' if tma else 'cp.async'} {per_sm}/SM stages {stages} {tag}", launch)
                        except Exception as error:  # a diagnostic: report and go on (shared memory, say)
                            print(f"  {shape} persistent {tma} {per_sm} {stages} {tag}: {type(error).__name__}: {str(error)[:200]}", flush=True)
                            continue
                        if per_sm == 2 and stages == 3:
                            check(f"persistent TMA {tma} {tag}", lambda: (launch(), partial[:programs])[1])
        print(f"\n## {m}x{n}: copy {copy_gbs:.0f} GB/s\n| kernel | us | share of copy |\n| --- | --- | --- |")
        for name, us, share in rows:
            print(f"| {name} | {us:.0f} | {share:.2f} |", flush=True)
        del g, dgrad, wgrad_t, out
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
