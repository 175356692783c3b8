"""Fused FP8 quantization of the output gradient for both backward GEMMs, reference beside it.

dY [M, N] is read twice (an amax pass with its own larger tiles, then a quantize pass), or once
with delayed scaling (``amax_history``: the previous call's maxima give the scales; a fallback
pass rewrites an operand that saturated); writes
    dgrad operand  Q8(dY · diag(s_W))    FP8 [M, N], row-major    (A of dX = A · C_W)
    wgrad operand  Q8(diag(s_X) · dY)    FP8 [N, M], row-major    (A of dW = A · C_X: already
                                          transposed, as the FP8 GEMM wants it)
each with one fp32 tensor scale amax / fp8_max: the recipe's FP8 `tensor` specs, with the
backward folding of ``megatron_fp4.backward``. The reference is
``megatron_fp4.backward.quantize_grad_output_reference``; the test compares them bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quantize import QuantizedTensor, QuantSpec
from .fp8_rounding import fp8_cast, hardware_fp8_cast
from .quantize_rows import _max_keeping_nan

__all__ = ["FP8_TENSOR_SPECS", "quantize_grad_folded", "supports_grad_specs"]

# recipe dtype -> (mantissa bits, exponent bias, is E4M3FN, torch dtype)
FP8_LAYOUTS = {"fp8_e5m2": (2, 15, False, torch.float8_e5m2), "fp8_e4m3": (3, 7, True, torch.float8_e4m3fn)}
FP8_TENSOR_SPECS = tuple(QuantSpec(dtype, "tensor") for dtype in FP8_LAYOUTS)
BLOCK_M, BLOCK_N, NUM_WARPS = 64, 128, 4  # the quantize pass (H200 sweep, NOTES.md session 11: 64x128 +4-6% over 64x64)
AMAX_BLOCK_M, AMAX_BLOCK_N, AMAX_WARPS = 64, 256, 8  # the amax pass: larger tiles, fewer partial maxima
FINALIZE_BLOCK, FINALIZE_WARPS = 8192, 8  # the one-program finalisation: up to 8192 partial pairs per load, not a loop of 1024s
REDO_PROGRAMS = 264  # delayed scaling's fallback grid (two per H100/H200 SM): small, so its no-op launch is cheap
HARDWARE_CAST = True  # compiled kernels: the cvt instruction (benchmarks/NOTES.md, session 4)


@triton.jit
def _tile(g_ptr, column_scale_ptr, row_scale_ptr, tile_m, tile_n, M, N, stride_g, BM: tl.constexpr, BN: tl.constexpr):
    """(rows, cols, mask, dY tile times its column scales, dY tile times its row scales), in fp32."""
    rows = tile_m * BM + tl.arange(0, BM)
    cols = tile_n * BN + tl.arange(0, BN)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    g = tl.load(g_ptr + rows[:, None].to(tl.int64) * stride_g + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    column_scale = tl.load(column_scale_ptr + cols, mask=cols < N, other=1.0)
    row_scale = tl.load(row_scale_ptr + rows, mask=rows < M, other=1.0)
    return rows, cols, mask, g * column_scale[None, :], g * row_scale[:, None]


@triton.jit
def _tile_absmax(x):
    """max |x| over a tile, NaN if it holds a NaN, Inf if an Inf: the maximum carries the
    non-finite check (no separate count: it cost as much as the rest of the pass)."""
    return tl.reduce(tl.abs(x), None, _max_keeping_nan)


@triton.jit
def _folded_amax_kernel(g_ptr, column_scale_ptr, row_scale_ptr, partial_ptr, M, N, stride_g, BM: tl.constexpr, BN: tl.constexpr):
    _, _, _, dgrad, wgrad = _tile(g_ptr, column_scale_ptr, row_scale_ptr, tl.program_id(0), tl.program_id(1), M, N, stride_g, BM, BN)
    out = partial_ptr + (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * 2
    tl.store(out, _tile_absmax(dgrad))
    tl.store(out + 1, _tile_absmax(wgrad))


@triton.jit
def _partial_maxima(partial_ptr, n_partial, BLOCK: tl.constexpr):
    """The (dgrad, wgrad) maxima over the tiles' partial maxima (NaN if any is NaN)."""
    d_amax = tl.zeros((BLOCK,), dtype=tl.float32)
    w_amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_partial, BLOCK):
        index = start + tl.arange(0, BLOCK)
        valid = index < n_partial
        d_amax = _max_keeping_nan(d_amax, tl.load(partial_ptr + index * 2, mask=valid, other=0.0))
        w_amax = _max_keeping_nan(w_amax, tl.load(partial_ptr + index * 2 + 1, mask=valid, other=0.0))
    d = tl.reduce(d_amax, 0, _max_keeping_nan)
    w = tl.reduce(w_amax, 0, _max_keeping_nan)
    return d, w


@triton.jit
def _amax_scale(amax, FP8_MAX: tl.constexpr):
    """A tensor decode scale from its amax: amax / fp8_max, 1 for an all-zero tensor."""
    return tl.where(amax > 0, tl.math.div_rn(amax, FP8_MAX), 1.0)


@triton.jit
def _finalize_scales_kernel(partial_ptr, dgrad_scale_ptr, wgrad_scale_ptr, n_partial, D_MAX: tl.constexpr, W_MAX: tl.constexpr, BLOCK: tl.constexpr):
    """The two tensor decode scales from the tiles' partial maxima, on the device (no host
    round trip): amax / fp8_max, 1 for an all-zero tensor, NaN if any element was not finite
    (``scaling.absmax_scale``'s rule)."""
    d, w = _partial_maxima(partial_ptr, n_partial, BLOCK)
    d_scale = _amax_scale(d, D_MAX)
    w_scale = _amax_scale(w, W_MAX)
    tl.store(dgrad_scale_ptr, tl.where((d != d) | (d == float("inf")), float("nan"), d_scale))
    tl.store(wgrad_scale_ptr, tl.where((w != w) | (w == float("inf")), float("nan"), w_scale))


@triton.jit
def _history_scale(history_ptr, index, FP8_MAX: tl.constexpr):
    """Delayed scaling: one decode scale from the amax history (amax / fp8_max, 1 for 0)."""
    return _amax_scale(tl.load(history_ptr + index), FP8_MAX)


@triton.jit
def _delayed_finalize_kernel(
    partial_ptr, history_ptr, dgrad_scale_ptr, wgrad_scale_ptr, redo_ptr, n_partial, D_MAX: tl.constexpr, W_MAX: tl.constexpr, BLOCK: tl.constexpr
):
    """After the delayed-scale quantize pass: this gradient's maxima (from the tiles' partials).
    Where one exceeds its history (the operand saturated) or is not finite, that operand's scale
    becomes the current one (NaN if not finite) and ``redo`` is set, so the redo pass rewrites
    the operands; the history takes the finite maxima for the next call."""
    d, w = _partial_maxima(partial_ptr, n_partial, BLOCK)
    d_history = tl.load(history_ptr)
    w_history = tl.load(history_ptr + 1)
    d_finite = (d == d) & (d != float("inf"))
    w_finite = (w == w) & (w != float("inf"))
    d_current = tl.where(d_finite, _amax_scale(d, D_MAX), float("nan"))
    w_current = tl.where(w_finite, _amax_scale(w, W_MAX), float("nan"))
    d_redo = ~(d <= d_history)  # NaN compares false: redone
    w_redo = ~(w <= w_history)
    tl.store(dgrad_scale_ptr, tl.where(d_redo, d_current, tl.load(dgrad_scale_ptr)))
    tl.store(wgrad_scale_ptr, tl.where(w_redo, w_current, tl.load(wgrad_scale_ptr)))
    tl.store(redo_ptr, (d_redo | w_redo).to(tl.int32))
    tl.store(history_ptr, tl.where(d_finite, d, d_history))
    tl.store(history_ptr + 1, tl.where(w_finite, w, w_history))


@triton.jit
def _quantize_tile(
    tile_m, tile_n, g_ptr, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, partial_ptr, history_ptr, M, N, stride_g,
    D_MANTISSA: tl.constexpr, D_BIAS: tl.constexpr, D_E4M3FN: tl.constexpr,
    W_MANTISSA: tl.constexpr, W_BIAS: tl.constexpr, W_E4M3FN: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, HARDWARE_CAST: tl.constexpr, PARTIAL_AMAX: tl.constexpr,
    FROM_HISTORY: tl.constexpr, D_MAX: tl.constexpr, W_MAX: tl.constexpr,
):
    """The two FP8 operands of tile (tile_m, tile_n) with the scales at dgrad/wgrad_scale_ptr, or
    (FROM_HISTORY, delayed scaling) with those of the amax history, which tile (0, 0) then writes
    there; PARTIAL_AMAX: also the tile's two maxima (delayed scaling reads dY once), reduced over
    the tile flattened (in-thread first, then one shuffle tree; a maximum does not depend on the
    order), not row by row: the maxima's share of the pass fell from ~30% to ~10% (NOTES.md,
    session 12). The wgrad bytes are transposed as computed (``tl.trans`` is a free
    reinterpretation) and stored in their own layout, rows contiguous, so the writes coalesce."""
    if FROM_HISTORY:
        d_scale = _history_scale(history_ptr, 0, D_MAX)
        w_scale = _history_scale(history_ptr, 1, W_MAX)
        if (tile_m == 0) & (tile_n == 0):
            tl.store(dgrad_scale_ptr, d_scale)
            tl.store(wgrad_scale_ptr, w_scale)
    else:
        d_scale = tl.load(dgrad_scale_ptr)
        w_scale = tl.load(wgrad_scale_ptr)
    d_inverse = tl.math.div_rn(1.0, d_scale)
    w_inverse = tl.math.div_rn(1.0, w_scale)
    rows, cols, mask, dgrad, wgrad = _tile(g_ptr, column_scale_ptr, row_scale_ptr, tile_m, tile_n, M, N, stride_g, BM, BN)
    if PARTIAL_AMAX:
        out = partial_ptr + (tile_m * tl.cdiv(N, BN) + tile_n) * 2
        tl.store(out, _tile_absmax(dgrad))
        tl.store(out + 1, _tile_absmax(wgrad))
    dgrad_byte = fp8_cast(dgrad * d_inverse, D_MANTISSA, D_BIAS, D_E4M3FN, HARDWARE_CAST)
    tl.store(dgrad_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], dgrad_byte.to(tl.uint8), mask=mask)
    wgrad_byte = fp8_cast(wgrad * w_inverse, W_MANTISSA, W_BIAS, W_E4M3FN, HARDWARE_CAST)
    transposed = cols[:, None].to(tl.int64) * M + rows[None, :]
    transposed_mask = (cols[:, None] < N) & (rows[None, :] < M)
    tl.store(wgrad_t_ptr + transposed, tl.trans(wgrad_byte).to(tl.uint8), mask=transposed_mask)


@triton.jit
def _folded_quantize_kernel(
    g_ptr, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, partial_ptr, history_ptr, M, N, stride_g,
    D_MANTISSA: tl.constexpr, D_BIAS: tl.constexpr, D_E4M3FN: tl.constexpr,
    W_MANTISSA: tl.constexpr, W_BIAS: tl.constexpr, W_E4M3FN: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, HARDWARE_CAST: tl.constexpr, PARTIAL_AMAX: tl.constexpr,
    FROM_HISTORY: tl.constexpr, D_MAX: tl.constexpr, W_MAX: tl.constexpr,
):
    """One tile per program (``_quantize_tile``)."""
    _quantize_tile(
        tl.program_id(0), tl.program_id(1), g_ptr, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, partial_ptr,
        history_ptr, M, N, stride_g, D_MANTISSA, D_BIAS, D_E4M3FN, W_MANTISSA, W_BIAS, W_E4M3FN, BM, BN, HARDWARE_CAST, PARTIAL_AMAX,
        FROM_HISTORY, D_MAX, W_MAX,
    )


@triton.jit
def _folded_redo_kernel(
    g_ptr, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, redo_ptr, M, N, stride_g,
    D_MANTISSA: tl.constexpr, D_BIAS: tl.constexpr, D_E4M3FN: tl.constexpr,
    W_MANTISSA: tl.constexpr, W_BIAS: tl.constexpr, W_E4M3FN: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, HARDWARE_CAST: tl.constexpr, D_MAX: tl.constexpr, W_MAX: tl.constexpr,
):
    """Delayed scaling's fallback: launched on a small persistent grid after every delayed pass,
    it rewrites all tiles with the finalized scales only if ``redo`` is set; otherwise each program
    loads one flag and ends (no host decision, nothing read)."""
    if tl.load(redo_ptr) != 0:
        tiles_n = tl.cdiv(N, BN)
        for tile in range(tl.program_id(0), tl.cdiv(M, BM) * tiles_n, tl.num_programs(0)):
            _quantize_tile(
                tile // tiles_n, tile % tiles_n, g_ptr, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, redo_ptr,
                redo_ptr, M, N, stride_g, D_MANTISSA, D_BIAS, D_E4M3FN, W_MANTISSA, W_BIAS, W_E4M3FN, BM, BN, HARDWARE_CAST, False,
                False, D_MAX, W_MAX,
            )


def supports_grad_specs(dgrad_spec: QuantSpec, wgrad_spec: QuantSpec) -> bool:
    return dgrad_spec in FP8_TENSOR_SPECS and wgrad_spec in FP8_TENSOR_SPECS


def quantize_grad_folded(
    g2d: torch.Tensor,
    dgrad_spec: QuantSpec,
    wgrad_spec: QuantSpec,
    weight_scale: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    tile: tuple[int, int] | None = None,
    num_warps: int | None = None,
    hardware_cast: bool | None = None,
    amax_tile: tuple[int, int] | None = None,
    amax_warps: int | None = None,
    amax_history: torch.Tensor | None = None,
) -> tuple[QuantizedTensor, QuantizedTensor]:
    """(Q8(dY·diag(s_W)), Q8(diag(s_X)·dY)) for FP8 `tensor` specs; a scale None is not folded.

    The wgrad operand's data is a [M, N] view of its transposed [N, M] storage. tile/num_warps:
    the quantize pass's [rows, columns] tile (defaults: H200 sweeps, benchmarks/NOTES.md);
    amax_tile/amax_warps: the amax pass's (benchmarks/bench_quant.py --sweep).

    amax_history: delayed scaling (``backward.quantize_grad_output_delayed_reference``, bit for
    bit): a float32 [2] device tensor holding the previous call's (dgrad, wgrad) maxima, updated
    in place. dY is read once, quantized with the history's scales while this call's maxima are
    taken; an operand whose maximum exceeds its history (it saturated), or is not finite, is
    written again with its current scale by a pass that does nothing otherwise.
    """
    if not supports_grad_specs(dgrad_spec, wgrad_spec):
        raise ValueError(f"quantize_grad_folded: FP8 tensor specs only, got {dgrad_spec.describe()}, {wgrad_spec.describe()}")
    m, n = g2d.shape
    if g2d.stride(-1) != 1:
        g2d = g2d.contiguous()
    ones = None
    if weight_scale is None or input_scale is None:
        ones = torch.ones(max(m, n), dtype=torch.float32, device=g2d.device)
    column_scale = (weight_scale if weight_scale is not None else ones[:n]).float().contiguous()
    row_scale = (input_scale if input_scale is not None else ones[:m]).float().contiguous()
    block_m, block_n = tile or (BLOCK_M, BLOCK_N)
    warps = num_warps or NUM_WARPS
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    d_mantissa, d_bias, d_e4m3, d_dtype = FP8_LAYOUTS[dgrad_spec.dtype]
    w_mantissa, w_bias, w_e4m3, w_dtype = FP8_LAYOUTS[wgrad_spec.dtype]
    maxima = {"D_MAX": torch.finfo(d_dtype).max, "W_MAX": torch.finfo(w_dtype).max}
    if amax_history is not None and (amax_history.dtype != torch.float32 or amax_history.shape != (2,) or amax_history.device != g2d.device):
        raise ValueError(f"quantize_grad_folded: amax_history must be a float32 [2] tensor on {g2d.device}, got {amax_history.dtype} {tuple(amax_history.shape)} on {amax_history.device}")
    amax_m, amax_n = amax_tile or (AMAX_BLOCK_M, AMAX_BLOCK_N)
    amax_grid = (triton.cdiv(m, amax_m), triton.cdiv(n, amax_n))
    n_partial = grid[0] * grid[1] if amax_history is not None else amax_grid[0] * amax_grid[1]
    # the small fp32 state in one allocation (host time): the two scales 16 bytes apart (cuBLAS
    # refuses a scale pointer that is not 16-byte aligned), the redo flag, the partial maxima
    state = torch.empty(12 + 2 * n_partial, dtype=torch.float32, device=g2d.device)
    dgrad_scale, wgrad_scale = state[0:1].view(1, 1), state[4:5].view(1, 1)
    redo, partial = state[8:9].view(torch.int32), state[12:]
    dgrad = torch.empty(m, n, dtype=torch.uint8, device=g2d.device)
    wgrad_t = torch.empty(n, m, dtype=torch.uint8, device=g2d.device)
    operands = (g2d, column_scale, row_scale, dgrad_scale, wgrad_scale, dgrad, wgrad_t)
    layout = dict(
        D_MANTISSA=d_mantissa, D_BIAS=d_bias, D_E4M3FN=d_e4m3, W_MANTISSA=w_mantissa, W_BIAS=w_bias, W_E4M3FN=w_e4m3,
        BM=block_m, BN=block_n, num_warps=warps, **maxima,
        HARDWARE_CAST=(HARDWARE_CAST and hardware_fp8_cast()) if hardware_cast is None else hardware_cast,
    )
    finalize = dict(BLOCK=min(triton.next_power_of_2(n_partial), FINALIZE_BLOCK), num_warps=FINALIZE_WARPS, **maxima)
    if amax_history is None:  # current scaling: an amax pass, the scales, the quantize pass
        _folded_amax_kernel[amax_grid](g2d, column_scale, row_scale, partial, m, n, g2d.stride(0), BM=amax_m, BN=amax_n, num_warps=amax_warps or AMAX_WARPS)
        _finalize_scales_kernel[(1,)](partial, dgrad_scale, wgrad_scale, n_partial, **finalize)
        _folded_quantize_kernel[grid](*operands, partial, partial, m, n, g2d.stride(0), PARTIAL_AMAX=False, FROM_HISTORY=False, **layout)
    else:  # delayed scaling: one quantize pass with the history's scales taking the maxima, the finalisation, the fallback pass
        _folded_quantize_kernel[grid](*operands, partial, amax_history, m, n, g2d.stride(0), PARTIAL_AMAX=True, FROM_HISTORY=True, **layout)
        _delayed_finalize_kernel[(1,)](partial, amax_history, dgrad_scale, wgrad_scale, redo, n_partial, **finalize)
        _folded_redo_kernel[(min(grid[0] * grid[1], REDO_PROGRAMS),)](*operands, redo, m, n, g2d.stride(0), **layout)
    shape = torch.Size((m, n))
    return (
        QuantizedTensor(dgrad.view(d_dtype), dgrad_scale, None, dgrad_spec, shape, torch.float32),
        QuantizedTensor(wgrad_t.view(w_dtype).t(), wgrad_scale, None, wgrad_spec, shape, torch.float32),
    )
