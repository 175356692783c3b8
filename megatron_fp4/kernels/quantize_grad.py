"""Fused FP8 quantization of the output gradient for both backward GEMMs, reference beside it.

dY [M, N] is read twice (an amax pass with its own larger tiles, then a quantize pass), or once
with delayed scaling (``amax_history``: the previous call's maxima give the scales; the
finalisation rewrites an operand that saturated); writes
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

from ..backward import validate_grad_amax_state
from ..recipe import MAX_AMAX_MARGIN
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
FINALIZE_PROGRAMS = 264  # delayed scaling's finalisation grid (two per H100/H200 SM): small, so its usual no-op is cheap
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
def _history_limit(state_ptr, index, MARGIN_FACTOR: tl.constexpr):
    """Delayed scaling: the largest maximum one operand's history scale takes without saturating,
    the history times 2^margin (a power of two: exact, or inf, which never serves as a scale)."""
    return tl.load(state_ptr + index) * MARGIN_FACTOR


@triton.jit
def _quantize_tile(
    tile_m, tile_n, d_scale, w_scale, g_ptr, column_scale_ptr, row_scale_ptr, dgrad_ptr, wgrad_t_ptr, state_ptr, M, N, stride_g,
    D_MANTISSA: tl.constexpr, D_BIAS: tl.constexpr, D_E4M3FN: tl.constexpr,
    W_MANTISSA: tl.constexpr, W_BIAS: tl.constexpr, W_E4M3FN: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, HARDWARE_CAST: tl.constexpr, RUNNING_AMAX: tl.constexpr,
):
    """The two FP8 operands of tile (tile_m, tile_n) with decode scales d_scale / w_scale.
    RUNNING_AMAX (delayed scaling reads dY once): the tile's two maxima also go into the running
    maxima at state_ptr[2:4], an atomic max on their bits (for floats >= 0, NaN included, integer
    order is float order; a maximum does not depend on the order, so the result is exact). Each
    is reduced over the tile flattened (in-thread first, then one shuffle tree), not row by row:
    the maxima's share of the pass fell from ~30% to ~10% (NOTES.md, session 12). The wgrad bytes
    are transposed as computed (``tl.trans`` is a free reinterpretation) and stored in their own
    layout, rows contiguous, so the writes coalesce."""
    d_inverse = tl.math.div_rn(1.0, d_scale)
    w_inverse = tl.math.div_rn(1.0, w_scale)
    rows, cols, mask, dgrad, wgrad = _tile(g_ptr, column_scale_ptr, row_scale_ptr, tile_m, tile_n, M, N, stride_g, BM, BN)
    if RUNNING_AMAX:
        running = state_ptr.to(tl.pointer_type(tl.int32)) + 2
        tl.atomic_max(running, _tile_absmax(dgrad).to(tl.int32, bitcast=True), sem="relaxed")
        tl.atomic_max(running + 1, _tile_absmax(wgrad).to(tl.int32, bitcast=True), sem="relaxed")
    dgrad_byte = fp8_cast(dgrad * d_inverse, D_MANTISSA, D_BIAS, D_E4M3FN, HARDWARE_CAST)
    tl.store(dgrad_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], dgrad_byte.to(tl.uint8), mask=mask)
    wgrad_byte = fp8_cast(wgrad * w_inverse, W_MANTISSA, W_BIAS, W_E4M3FN, HARDWARE_CAST)
    transposed = cols[:, None].to(tl.int64) * M + rows[None, :]
    transposed_mask = (cols[:, None] < N) & (rows[None, :] < M)
    tl.store(wgrad_t_ptr + transposed, tl.trans(wgrad_byte).to(tl.uint8), mask=transposed_mask)


@triton.jit
def _folded_quantize_kernel(
    g_ptr, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, state_ptr, M, N, stride_g,
    D_MANTISSA: tl.constexpr, D_BIAS: tl.constexpr, D_E4M3FN: tl.constexpr,
    W_MANTISSA: tl.constexpr, W_BIAS: tl.constexpr, W_E4M3FN: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, HARDWARE_CAST: tl.constexpr, DELAYED: tl.constexpr, D_MAX: tl.constexpr, W_MAX: tl.constexpr,
    MARGIN_FACTOR: tl.constexpr,
):
    """One tile per program (``_quantize_tile``): with the scales at dgrad/wgrad_scale_ptr
    (current scaling), or (DELAYED) with those of the history at state_ptr[0:2] times
    MARGIN_FACTOR, taking the running maxima; the finalisation kernel then writes the scales."""
    if DELAYED:
        d_scale = _amax_scale(_history_limit(state_ptr, 0, MARGIN_FACTOR), D_MAX)
        w_scale = _amax_scale(_history_limit(state_ptr, 1, MARGIN_FACTOR), W_MAX)
    else:
        d_scale = tl.load(dgrad_scale_ptr)
        w_scale = tl.load(wgrad_scale_ptr)
    _quantize_tile(
        tl.program_id(0), tl.program_id(1), d_scale, w_scale, g_ptr, column_scale_ptr, row_scale_ptr, dgrad_ptr, wgrad_t_ptr, state_ptr,
        M, N, stride_g, D_MANTISSA, D_BIAS, D_E4M3FN, W_MANTISSA, W_BIAS, W_E4M3FN, BM, BN, HARDWARE_CAST, DELAYED,
    )


@triton.jit
def _delayed_finalize_kernel(
    g_ptr, column_scale_ptr, row_scale_ptr, dgrad_scale_ptr, wgrad_scale_ptr, dgrad_ptr, wgrad_t_ptr, state_ptr, M, N, stride_g,
    D_MANTISSA: tl.constexpr, D_BIAS: tl.constexpr, D_E4M3FN: tl.constexpr,
    W_MANTISSA: tl.constexpr, W_BIAS: tl.constexpr, W_E4M3FN: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, HARDWARE_CAST: tl.constexpr, D_MAX: tl.constexpr, W_MAX: tl.constexpr,
    MARGIN_FACTOR: tl.constexpr,
):
    """After the delayed-scale quantize pass, on a small grid: this gradient's maxima (the running
    maxima at state_ptr[2:4]) against the history's limits (state_ptr[0:2] times 2^margin). Where
    one exceeds its limit (the operand saturated), the limit is not finite, or the maximum is not
    finite, that operand's scale becomes the current one (NaN if not finite) and every program
    rewrites its share of the tiles with the final scales; otherwise each program reads four
    numbers and ends (no host decision, nothing else read).

    Then the state for the next call: each program takes a ticket (``state_ptr[4]``, an atomic
    add that orders what the program read before it) and the one holding the last ticket, when
    every other program has read the state, writes the final scales, the history (the finite
    maxima), counts the call (state_ptr[6]) and a fallback (state_ptr[5]), and zeroes the running
    maxima and the ticket. So the finalisation needs no launch of its own and no program reads a
    value another writes."""
    d = tl.load(state_ptr + 2)
    w = tl.load(state_ptr + 3)
    d_history = tl.load(state_ptr)
    w_history = tl.load(state_ptr + 1)
    d_limit = d_history * MARGIN_FACTOR  # as ``_history_limit``
    w_limit = w_history * MARGIN_FACTOR
    d_finite = (d == d) & (d != float("inf"))
    w_finite = (w == w) & (w != float("inf"))
    d_redo = ~(d <= d_limit) | (d_limit == float("inf"))  # NaN compares false: redone
    w_redo = ~(w <= w_limit) | (w_limit == float("inf"))
    d_scale = tl.where(d_redo, tl.where(d_finite, _amax_scale(d, D_MAX), float("nan")), _amax_scale(d_limit, D_MAX))
    w_scale = tl.where(w_redo, tl.where(w_finite, _amax_scale(w, W_MAX), float("nan")), _amax_scale(w_limit, W_MAX))
    if d_redo | w_redo:
        tiles_n = tl.cdiv(N, BN)
        for tile in range(tl.program_id(0), tl.cdiv(M, BM) * tiles_n, tl.num_programs(0)):
            _quantize_tile(
                tile // tiles_n, tile % tiles_n, d_scale, w_scale, g_ptr, column_scale_ptr, row_scale_ptr, dgrad_ptr, wgrad_t_ptr, state_ptr,
                M, N, stride_g, D_MANTISSA, D_BIAS, D_E4M3FN, W_MANTISSA, W_BIAS, W_E4M3FN, BM, BN, HARDWARE_CAST, False,
            )
    tl.debug_barrier()  # every thread of this program has read the state before its ticket is taken
    ticket_ptr = state_ptr.to(tl.pointer_type(tl.int32)) + 4
    if tl.atomic_add(ticket_ptr, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        tl.store(dgrad_scale_ptr, d_scale)
        tl.store(wgrad_scale_ptr, w_scale)
        tl.store(state_ptr, tl.where(d_finite, d, d_history))
        tl.store(state_ptr + 1, tl.where(w_finite, w, w_history))
        tl.store(state_ptr + 2, 0.0)
        tl.store(state_ptr + 3, 0.0)
        tl.store(ticket_ptr, 0)
        tl.store(state_ptr + 5, tl.load(state_ptr + 5) + (d_redo | w_redo).to(tl.float32))
        tl.store(state_ptr + 6, tl.load(state_ptr + 6) + 1.0)


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
    amax_margin: int = 0,
) -> tuple[QuantizedTensor, QuantizedTensor]:
    """(Q8(dY·diag(s_W)), Q8(diag(s_X)·dY)) for FP8 `tensor` specs; a scale None is not folded.

    The wgrad operand's data is a [M, N] view of its transposed [N, M] storage. tile/num_warps:
    the quantize pass's [rows, columns] tile (defaults: H200 sweeps, benchmarks/NOTES.md);
    amax_tile/amax_warps: the amax pass's (benchmarks/bench_quant.py --sweep).

    amax_history: delayed scaling (``backward.quantize_grad_output_delayed_reference``, bit for
    bit): the layer's ``backward.new_grad_amax_state`` tensor, whose [0:2] hold the previous
    call's (dgrad, wgrad) maxima, updated in place (its [2:8], the kernels' scratch, are zero
    again when the call's kernels end). dY is read once, quantized with the history's scales
    while this call's maxima are taken; an operand whose maximum exceeds its history (it
    saturated), or is not finite, is written again with its current scale by the finalisation,
    which otherwise only reads four numbers: two launches, no partial maxima. amax_margin: the
    history's scale is taken for its maximum times 2^amax_margin (``FP4Recipe.grad_amax_margin``).
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
    if amax_history is not None:
        validate_grad_amax_state(amax_history, g2d.device, "quantize_grad_folded")
    if not (isinstance(amax_margin, int) and 0 <= amax_margin <= MAX_AMAX_MARGIN):
        raise ValueError(f"quantize_grad_folded: amax_margin must be an integer in [0, {MAX_AMAX_MARGIN}] (--fp4-grad-amax-margin), got {amax_margin!r}")
    amax_m, amax_n = amax_tile or (AMAX_BLOCK_M, AMAX_BLOCK_N)
    amax_grid = (triton.cdiv(m, amax_m), triton.cdiv(n, amax_n))
    n_partial = 0 if amax_history is not None else amax_grid[0] * amax_grid[1]
    # the small fp32 state in one allocation (host time): the two scales 16 bytes apart (cuBLAS
    # refuses a scale pointer that is not 16-byte aligned), then current scaling's partial maxima
    state = torch.empty(8 + 2 * n_partial, dtype=torch.float32, device=g2d.device)
    dgrad_scale, wgrad_scale, partial = state[0:1].view(1, 1), state[4:5].view(1, 1), state[8:]
    dgrad = torch.empty(m, n, dtype=torch.uint8, device=g2d.device)
    wgrad_t = torch.empty(n, m, dtype=torch.uint8, device=g2d.device)
    operands = (g2d, column_scale, row_scale, dgrad_scale, wgrad_scale, dgrad, wgrad_t)
    layout = dict(
        D_MANTISSA=d_mantissa, D_BIAS=d_bias, D_E4M3FN=d_e4m3, W_MANTISSA=w_mantissa, W_BIAS=w_bias, W_E4M3FN=w_e4m3,
        BM=block_m, BN=block_n, num_warps=warps, **maxima,
        MARGIN_FACTOR=float(2**amax_margin) if amax_history is not None else 1.0,  # (current scaling: one compiled variant)
        HARDWARE_CAST=(HARDWARE_CAST and hardware_fp8_cast()) if hardware_cast is None else hardware_cast,
    )
    if amax_history is None:  # current scaling: an amax pass, the scales, the quantize pass
        finalize = dict(BLOCK=min(triton.next_power_of_2(n_partial), FINALIZE_BLOCK), num_warps=FINALIZE_WARPS, **maxima)
        _folded_amax_kernel[amax_grid](g2d, column_scale, row_scale, partial, m, n, g2d.stride(0), BM=amax_m, BN=amax_n, num_warps=amax_warps or AMAX_WARPS)
        _finalize_scales_kernel[(1,)](partial, dgrad_scale, wgrad_scale, n_partial, **finalize)
        _folded_quantize_kernel[grid](*operands, partial, m, n, g2d.stride(0), DELAYED=False, **layout)
    else:  # delayed scaling: one quantize pass with the history's scales taking the maxima, then the finalisation (and fallback)
        _folded_quantize_kernel[grid](*operands, amax_history, m, n, g2d.stride(0), DELAYED=True, **layout)
        _delayed_finalize_kernel[(min(grid[0] * grid[1], FINALIZE_PROGRAMS),)](*operands, amax_history, m, n, g2d.stride(0), **layout)
    shape = torch.Size((m, n))
    return (
        QuantizedTensor(dgrad.view(d_dtype), dgrad_scale, None, dgrad_spec, shape, torch.float32),
        QuantizedTensor(wgrad_t.view(w_dtype).t(), wgrad_scale, None, wgrad_spec, shape, torch.float32),
    )
