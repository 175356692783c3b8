"""Fused per-row FP4 quantization in Triton, with its PyTorch reference beside it.

One pass per row computes the absmax (after an optional OCC clamp), the fp32 decode scale
amax/6 and its reciprocal (the encode multiplier), and writes three forms of the same E2M1
values: (a) FP8 E4M3 elements for FP8 tensor cores, (b) packed 4-bit codes (two per byte) to
keep for backward, (c) the fp32 scale per row.
Bit-identical to ``megatron_fp4.quantize.quantize`` with ``QuantSpec("fp4", "row")`` (tested on
CPU under ``TRITON_INTERPRET=1`` and on GPU): x times the IEEE reciprocal of the scale, ties to
the even code, the same NaN/Inf policy (a row holding NaN/Inf gets a NaN scale).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..formats import E2M1, decode, unpack_codes
from ..quantize import QuantizedTensor, QuantSpec, quantize
from .fp8_rounding import fp8_cast, hardware_fp8_cast, round_to_bf16

__all__ = ["quantize_rows", "quantize_rows_inline", "quantize_rows_reference", "fp8_from_codes", "rms_rstd", "supports_spec"]

ROW_SPEC = QuantSpec("fp4", "row", "e2m1")
MAX_WHOLE_ROW = 16384  # rows up to this length are held whole (one read of x; H200 sweep, NOTES.md session 9)
ROWS_PER_PROGRAM = 1  # see the sweep in benchmarks/NOTES.md
INDEX_BY_ROUNDING = True  # the E2M1 index in integer operations (``_e2m1_round``), not 7 comparisons


def row_warps(k: int, whole_row: bool = True) -> int:
    """Warps per row of ``k`` elements, measured on the H200 (benchmarks/NOTES.md, session 11,
    after the one-addition E2M1 rounding): 2 for rows up to 5120 (the fewest instructions per
    element, a cheaper cross-warp reduction: 0.85 / 0.91 / 0.90 of copy at 2048 / 4096 / 5120
    against 0.81 / 0.85 / 0.81 with 4), else 4 (with 2, an 11008-wide row holds 172 elements per
    thread and drops to 0.58; the compiler drops the padding's registers, so what counts is the
    real width); the same for the inline operand (0.59 / 0.76 with 2 at 4096 / 5120 against 0.54
    with session 9's 8 and 0.64 with 4). Rows longer than ``MAX_WHOLE_ROW``, walked in two passes,
    keep 4 (session 9's sweep; not re-measured with 2)."""
    return 2 if whole_row and k <= 5120 else 4


@triton.jit
def _e2m1_index(a):
    """Index of the nearest E2M1 magnitude of a >= 0, ties to even index (see formats.py)."""
    index = (a > 0.25).to(tl.int32) + (a >= 0.75).to(tl.int32) + (a > 1.25).to(tl.int32)
    index += (a >= 1.75).to(tl.int32) + (a > 2.5).to(tl.int32) + (a >= 3.5).to(tl.int32)
    index += (a > 5.0).to(tl.int32) + (a != a).to(tl.int32) * 7  # NaN saturates like the reference
    return tl.minimum(index, 7)


@triton.jit
def _e2m1_grid_value(index):
    """Magnitude of E2M1 index 0..7 (0, .5, 1, 1.5, 2, 3, 4, 6) from its bits: index = 2e + m is
    (1 + m/2) 2^(e-1) for e >= 1, i.e. fp32 bits (index << 22) + (126 << 23); 0 and 0.5 are index / 2."""
    normal = ((index << 22) + (126 << 23)).to(tl.float32, bitcast=True)
    return tl.where(index < 2, index.to(tl.float32) * 0.5, normal)


@triton.jit
def _e2m1_value(code):
    """fp32 value of 4-bit E2M1 codes (sign << 3 | index into 0, .5, 1, 1.5, 2, 3, 4, 6)."""
    magnitude = _e2m1_grid_value(code & 7)
    return (magnitude.to(tl.int32, bitcast=True) | ((code & 8) << 28)).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1_round(q):
    """(value, code) of fp32 ``q`` on the E2M1 grid with the reference's rounding (ties to the even
    code, saturating at 6, NaN as 6): the value as fp32 with q's sign (exact in FP8 E4M3, so one
    hardware conversion makes the FP8 operand) and the 4-bit code sign << 3 | index, int32.

    One fp32 addition does the rounding: the grid's spacing is 0.5 below 2, 1 in [2, 4) and 2 in
    [4, 6], which is the ulp of the "magic" 2^22, 2^23, 2^24; so with m = min(|q|, 6) (on the bit
    pattern: Inf and NaN become 6) and magic = 2^22 times m's binade, at least 1, the sum m + magic
    is m rounded to the grid, ties to even (an even multiple of the spacing is an even code), and
    (m + magic) - magic is the value. The sum's pattern holds the index too: its low bits count
    spacings (0..4 below 2, 2..4 in [2, 4), 2..3 in [4, 6]), to which the binade adds 0, 2 or 4,
    read from the magic's exponent ((magic_bits >> 22) is 298, 300, 302; + 6 is 0, 2, 4 mod 8).
    Equal to the reference's rounding on every one of the 2^32 fp32 patterns (checked in numpy,
    whose fp32 arithmetic this is; ``tests/kernel_tests/test_e2m1_round.py`` keeps a sample of it)."""
    bits = q.to(tl.int32, bitcast=True)
    magnitude = tl.minimum(tl.abs(q), 6.0)  # the non-NaN operand: NaN -> 6 (compiled and interpreted)
    magic_bits = tl.maximum(magnitude.to(tl.int32, bitcast=True) & 0x7F800000, 0x3F800000) + (22 << 23)
    magic = magic_bits.to(tl.float32, bitcast=True)
    total = magnitude + magic
    value = ((total - magic).to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)
    index = total.to(tl.int32, bitcast=True) + (magic_bits >> 22) + 6
    # (index & 7) | sign << 3 in one select: bits >> 28 (logical) holds the sign at bit 3 above 3 bits of exponent
    return value, (index & 7) | ((bits.to(tl.uint32, bitcast=True) >> 28).to(tl.int32, bitcast=True) & -8)


@triton.jit
def _e4m3_byte(index):
    """FP8 E4M3 bit pattern of the E2M1 magnitude with this index: 0, .5, 1, 1.5, 2, 3, 4, 6."""
    # from 1.0 (index 2, 0x38) on, each step adds one to the 3-bit mantissa/exponent field: +4
    return tl.where(index < 2, index * 0x30, index * 4 + 0x30)


@triton.jit
def _store_block(x, inverse, rows, start, fp8_ptr, codes_ptr, M, K: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr, BY_ROUNDING: tl.constexpr, HARDWARE_CAST: tl.constexpr):
    """Quantize a [R, BLOCK] tile with its rows' encode multipliers 1/scale [R, 1]; store FP8
    bytes and packed codes."""
    cols = start + tl.arange(0, BLOCK)
    q = x * inverse
    if BY_ROUNDING:
        value, code = _e2m1_round(q)
        fp8 = fp8_cast(value, 3, 7, True, HARDWARE_CAST)  # exact: every E2M1 value is an E4M3 value
    else:
        negative = (q.to(tl.int32, bitcast=True) >> 31) & 1
        index = _e2m1_index(tl.abs(q))
        fp8 = _e4m3_byte(index) | (negative << 7)
        code = index | (negative << 3)
    row_mask = rows[:, None] < M
    tl.store(fp8_ptr + rows[:, None] * K + cols[None, :], fp8.to(tl.uint8), mask=row_mask & (cols[None, :] < K))
    codes = code.to(tl.uint8)
    low_nibble, high_nibble = tl.split(tl.reshape(codes, (R, BLOCK // 2, 2)))
    half = start // 2 + tl.arange(0, BLOCK // 2)
    tl.store(codes_ptr + rows[:, None] * (K // 2) + half[None, :], low_nibble | (high_nibble << 4), mask=row_mask & (half[None, :] < K // 2))


@triton.jit
def _max_keeping_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _row_absmax(x):
    """max |x| per row, NaN if the row holds a NaN (Inf stays Inf)."""
    return tl.reduce(tl.abs(x), 1, _max_keeping_nan)


@triton.jit
def _row_scale(amax):
    """amax / 6; 1 for an all-zero row; NaN for a row holding NaN/Inf (``absmax_scale``)."""
    scale = tl.where(amax > 0, tl.math.div_rn(amax, 6.0), 1.0)
    return tl.where((amax != amax) | (amax == float("inf")), float("nan"), scale)


@triton.jit
def _clamp_keeping_nan(x, low, high):
    """torch.maximum(torch.minimum(x, high), low): NaN stays NaN, Inf is clamped."""
    return tl.maximum(tl.minimum(x, high, propagate_nan=tl.PropagateNan.ALL), low, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _swiglu(gate, up, dtype: tl.constexpr, HARDWARE_CAST: tl.constexpr):
    """silu(gate) * up in fp32, rounded once to the activation dtype: ``fused_inputs.swiglu_reference``
    (and megatron-core's compiled SwiGLU), up to the fp32 exponential's last bits. (The
    interpreter's bf16 cast truncates: there the rounding is done in integer operations.)"""
    value = gate / (1.0 + tl.exp(-gate)) * up  # approximate division: no worse than the exponential
    return _rounded_to(value, dtype, HARDWARE_CAST)


@triton.jit
def _rounded_to(value, dtype: tl.constexpr, HARDWARE_CAST: tl.constexpr):
    """fp32 ``value`` rounded once to the 16-bit activation dtype (nearest, ties to even), as fp32."""
    if dtype == tl.bfloat16 and not HARDWARE_CAST:
        return round_to_bf16(value)
    return value.to(dtype).to(tl.float32)


@triton.jit
def _rms_normalized(x, rows, cols, M, K: tl.constexpr, weight_ptr, rstd_ptr, dtype: tl.constexpr, HARDWARE_CAST: tl.constexpr):
    """RMSNorm of whole rows x [R, BLOCK] with their given 1/rms ``rstd`` [rows]: (x * rstd) *
    weight in fp32, rounded once to the activation dtype (``fused_inputs.rms_norm_reference``)."""
    rstd = tl.load(rstd_ptr + rows, mask=rows < M, other=1.0)
    weight = tl.load(weight_ptr + cols, mask=cols < K, other=0.0).to(tl.float32)
    return _rounded_to(x * rstd[:, None] * weight[None, :], dtype, HARDWARE_CAST)


@triton.jit
def _rms_rstd_kernel(x_ptr, rstd_ptr, M, stride_x, eps, K: tl.constexpr, BLOCK: tl.constexpr):
    """1 / sqrt(mean(x^2) + eps) of each row, in fp32 (one program per row, BLOCK columns a step)."""
    row = tl.program_id(0).to(tl.int64)
    total = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, K, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * stride_x + cols, mask=cols < K, other=0.0).to(tl.float32)
        total += x * x
    mean = tl.math.div_rn(tl.sum(total, axis=0), K * 1.0)
    tl.store(rstd_ptr + row, tl.math.div_rn(1.0, tl.sqrt_rn(mean + eps)))


@triton.jit
def _load_block(
    x_ptr, rows, cols, M, K: tl.constexpr, stride_x, low, high, HAS_CLAMP: tl.constexpr, SWIGLU: tl.constexpr, HARDWARE_CAST: tl.constexpr,
    act_ptr, STORE_ACTIVATION: tl.constexpr,
):
    """A [R, BLOCK] tile of the operand in fp32: x itself, or with SWIGLU the activation of the
    pre-activation rows [gate | up] (2K wide) it is computed from (stored to act_ptr, before any
    clamp, with STORE_ACTIVATION); clamped if HAS_CLAMP."""
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    pointers = x_ptr + rows[:, None] * stride_x + cols[None, :]
    if SWIGLU:
        gate = tl.load(pointers, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(pointers + K, mask=mask, other=0.0).to(tl.float32)
        x = _swiglu(gate, up, x_ptr.dtype.element_ty, HARDWARE_CAST)
        _store_activation(x, rows, cols, act_ptr, M, K, STORE_ACTIVATION)
    else:
        x = tl.load(pointers, mask=mask, other=0.0).to(tl.float32)
    if HAS_CLAMP:
        x = _clamp_keeping_nan(x, low, high)
    return x


@triton.jit
def _store_activation(x, rows, cols, act_ptr, M, K: tl.constexpr, STORE_ACTIVATION: tl.constexpr):
    """With STORE_ACTIVATION, the fused producer's output (the activation a separate kernel would
    have written) for telemetry and tests."""
    if STORE_ACTIVATION:
        tl.store(act_ptr + rows[:, None] * K + cols[None, :], x.to(act_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < K))


@triton.jit
def _quantize_rows_kernel(
    x_ptr, fp8_ptr, codes_ptr, scale_ptr, bounds_ptr, act_ptr, norm_weight_ptr, rstd_ptr, M, stride_x, K: tl.constexpr, HAS_CLAMP: tl.constexpr,
    R: tl.constexpr, BLOCK: tl.constexpr, BY_ROUNDING: tl.constexpr, HARDWARE_CAST: tl.constexpr, SWIGLU: tl.constexpr, STORE_ACTIVATION: tl.constexpr,
    NORM: tl.constexpr,
):
    """R rows per program (their reductions overlap each other's loads), BLOCK columns per step;
    with SWIGLU the rows are computed from the pre-activation (``_load_block``), with NORM (whole
    rows only) they are RMSNorm(x) with the given 1/rms per row (``_rms_normalized``), clamped after."""
    rows = (tl.program_id(0) * R + tl.arange(0, R)).to(tl.int64)
    low = 0.0
    high = 0.0
    if HAS_CLAMP:
        low = tl.load(bounds_ptr)
        high = tl.load(bounds_ptr + 1)
    tl.static_assert(BLOCK >= K or not NORM, "the fused RMSNorm needs whole rows")
    if BLOCK >= K:  # whole rows in registers: one read of x
        cols = tl.arange(0, BLOCK)
        x = _load_block(x_ptr, rows, cols, M, K, stride_x, low, high, HAS_CLAMP and not NORM, SWIGLU, HARDWARE_CAST, act_ptr, STORE_ACTIVATION)
        if NORM:
            x = _rms_normalized(x, rows, cols, M, K, norm_weight_ptr, rstd_ptr, x_ptr.dtype.element_ty, HARDWARE_CAST)
            _store_activation(x, rows, cols, act_ptr, M, K, STORE_ACTIVATION)
            if HAS_CLAMP:
                x = _clamp_keeping_nan(x, low, high)
        scale = _row_scale(_row_absmax(x))
        tl.store(scale_ptr + rows, scale, mask=rows < M)
        _store_block(x, tl.math.div_rn(1.0, scale)[:, None], rows, 0, fp8_ptr, codes_ptr, M, K, R, BLOCK, BY_ROUNDING, HARDWARE_CAST)
    else:  # long rows: an absmax pass, then a quantize pass (the rows are re-read, mostly from L2)
        amax = tl.zeros((R,), dtype=tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = _load_block(x_ptr, rows, cols, M, K, stride_x, low, high, HAS_CLAMP, SWIGLU, HARDWARE_CAST, act_ptr, STORE_ACTIVATION)
            amax = _max_keeping_nan(amax, _row_absmax(x))
        scale = _row_scale(amax)
        tl.store(scale_ptr + rows, scale, mask=rows < M)
        inverse = tl.math.div_rn(1.0, scale)[:, None]
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = _load_block(x_ptr, rows, cols, M, K, stride_x, low, high, HAS_CLAMP, SWIGLU, HARDWARE_CAST, act_ptr, False)
            _store_block(x, inverse, rows, start, fp8_ptr, codes_ptr, M, K, R, BLOCK, BY_ROUNDING, HARDWARE_CAST)


@triton.jit
def _store_inline_block(x, low, high, inverse, rows, start, out_ptr, M, K: tl.constexpr, BLOCK: tl.constexpr, HARDWARE_CAST: tl.constexpr):
    """The ``inline`` OCC operand of a [R, BLOCK] tile: the E4M3 byte of E2M1(clamp(x) / s) inside
    [low, high], of x / s (saturated at ±448) outside."""
    cols = start + tl.arange(0, BLOCK)
    q = x * inverse
    # E2M1 of x / s stands for E2M1(clamp(x) / s): they differ only at the clamped entries, whose
    # byte is E4M3(x / s) instead. One E4M3 conversion for both: the clamped entries' x / s
    # rounded (saturated at ±448 by the conversion itself: the hardware's satfinite form and
    # ``fp8_byte`` alike), the others' E2M1 value (exact). (x / s is NaN only in NaN rows, whose
    # scale is NaN; a NaN entry is not clamped and gets E2M1's NaN rule, as in the reference.)
    e2m1, _ = _e2m1_round(q)
    byte = fp8_cast(tl.where((x > high) | (x < low), q, e2m1), 3, 7, True, HARDWARE_CAST)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], byte.to(tl.uint8), mask=(rows[:, None] < M) & (cols[None, :] < K))


@triton.jit
def _min_keeping_nan(a, b):
    return tl.minimum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _inline_maxima(row_max, row_min, low, high):
    """(max |clamp(x)|, max |x|) of rows from their max and min (NaN-propagating): clamping is
    monotone, so |clamp(x)| is largest at an end of [clamp(min), clamp(max)]: the same values as
    reducing |clamp(x)| and |x| element by element, two reductions instead of four operations."""
    clamped = tl.maximum(tl.abs(_clamp_keeping_nan(row_max, low, high)), tl.abs(_clamp_keeping_nan(row_min, low, high)), propagate_nan=tl.PropagateNan.ALL)
    return clamped, tl.maximum(tl.abs(row_max), tl.abs(row_min), propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _inline_scale(clamped_amax, amax):
    """``occ.inline_outlier_scale``: max(amax(clamp x) / 6, amax(x) / 448); NaN for NaN/Inf rows."""
    scale = tl.maximum(_row_scale(clamped_amax), tl.math.div_rn(amax, 448.0), propagate_nan=tl.PropagateNan.ALL)
    return tl.where((amax != amax) | (amax == float("inf")), float("nan"), scale)


@triton.jit
def _quantize_rows_inline_kernel(
    x_ptr, out_ptr, scale_ptr, bounds_ptr, act_ptr, norm_weight_ptr, rstd_ptr, M, stride_x, K: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr,
    HARDWARE_CAST: tl.constexpr, SWIGLU: tl.constexpr, STORE_ACTIVATION: tl.constexpr, NORM: tl.constexpr,
):
    """R rows per program: both row maxima (clamped and raw) in one read, then the operand; with
    SWIGLU the rows are computed from the pre-activation (``_load_block``), with NORM (whole rows
    only) they are RMSNorm(x) with the given 1/rms per row (``_rms_normalized``)."""
    rows = (tl.program_id(0) * R + tl.arange(0, R)).to(tl.int64)
    low = tl.load(bounds_ptr)
    high = tl.load(bounds_ptr + 1)
    tl.static_assert(BLOCK >= K or not NORM, "the fused RMSNorm needs whole rows")
    if BLOCK >= K:  # whole rows in registers: one read of x
        cols = tl.arange(0, BLOCK)
        x = _load_block(x_ptr, rows, cols, M, K, stride_x, low, high, False, SWIGLU, HARDWARE_CAST, act_ptr, STORE_ACTIVATION)
        if NORM:
            x = _rms_normalized(x, rows, cols, M, K, norm_weight_ptr, rstd_ptr, x_ptr.dtype.element_ty, HARDWARE_CAST)
            _store_activation(x, rows, cols, act_ptr, M, K, STORE_ACTIVATION)
        clamped_amax, amax = _inline_maxima(tl.reduce(x, 1, _max_keeping_nan), tl.reduce(x, 1, _min_keeping_nan), low, high)
        scale = _inline_scale(clamped_amax, amax)
        tl.store(scale_ptr + rows, scale, mask=rows < M)
        _store_inline_block(x, low, high, tl.math.div_rn(1.0, scale)[:, None], rows, 0, out_ptr, M, K, BLOCK, HARDWARE_CAST)
    else:  # long rows: the maxima pass, then the operand pass (re-read mostly from L2)
        # (each running maximum used once after the loop: Triton 3.6's thread-locality pass asserts
        # on a loop result with two uses, as the row max/min of the whole-row path would be here)
        clamped_amax = tl.zeros((R,), dtype=tl.float32)
        amax = tl.zeros((R,), dtype=tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = _load_block(x_ptr, rows, cols, M, K, stride_x, low, high, False, SWIGLU, HARDWARE_CAST, act_ptr, STORE_ACTIVATION)
            clamped_amax = _max_keeping_nan(clamped_amax, _row_absmax(_clamp_keeping_nan(x, low, high)))
            amax = _max_keeping_nan(amax, _row_absmax(x))
        scale = _inline_scale(clamped_amax, amax)
        tl.store(scale_ptr + rows, scale, mask=rows < M)
        inverse = tl.math.div_rn(1.0, scale)[:, None]
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            x = _load_block(x_ptr, rows, cols, M, K, stride_x, low, high, False, SWIGLU, HARDWARE_CAST, act_ptr, False)
            _store_inline_block(x, low, high, inverse, rows, start, out_ptr, M, K, BLOCK, HARDWARE_CAST)


def _operand_rows(x: torch.Tensor, swiglu: bool, activation_out: torch.Tensor | None, what: str, norm=(None, None), block: int | None = None):
    """(x as [rows, width] with unit column stride, the operand's K, the operand's shape); with
    ``swiglu`` x is the pre-activation [..., 2K] ([gate | up], megatron-core's layout); ``norm``:
    (RMSNorm weight [K], 1/rms per row [rows] fp32) or (None, None), checked here."""
    width = x.shape[-1]
    if swiglu and width % 2:
        raise ValueError(f"{what}: the SwiGLU pre-activation {tuple(x.shape)} needs an even last dim ([gate | up])")
    k = width // 2 if swiglu else width
    x2d = x.reshape(-1, width)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    shape = torch.Size((*x.shape[:-1], k))
    weight, rstd = norm
    if (weight is None) != (rstd is None):
        raise ValueError(f"{what}: norm_weight and norm_rstd come together (the fused RMSNorm takes both)")
    if weight is not None:
        if swiglu:
            raise ValueError(f"{what}: the fused RMSNorm and the fused SwiGLU exclude each other")
        if weight.shape != (k,) or rstd.dtype != torch.float32 or rstd.shape != (x2d.shape[0],) or not rstd.is_contiguous():
            raise ValueError(f"{what}: norm_weight must be [{k}] and norm_rstd a contiguous float32 [{x2d.shape[0]}]; got {tuple(weight.shape)}, {rstd.dtype} {tuple(rstd.shape)}")
        if max(2, triton.next_power_of_2(k)) > MAX_WHOLE_ROW or (block is not None and block < k):
            raise ValueError(f"{what}: the fused RMSNorm holds whole rows (up to {MAX_WHOLE_ROW} elements), got rows of {k} and block {block}")
    if activation_out is not None and (not (swiglu or weight is not None) or activation_out.shape != shape or not activation_out.is_contiguous()):
        raise ValueError(f"{what}: activation_out must be a contiguous {tuple(shape)} tensor, and only with swiglu=True or a fused RMSNorm")
    return x2d, k, shape


def rms_rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) of each row of ``x`` [..., K], float32 [rows]: the statistics pass
    of the fused RMSNorm (``fused_inputs.rms_rstd_reference`` up to the fp32 sum's order)."""
    x2d = x.reshape(-1, x.shape[-1])
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    rstd = torch.empty(x2d.shape[0], dtype=torch.float32, device=x.device)
    k = x2d.shape[1]
    _rms_rstd_kernel[(x2d.shape[0],)](x2d, rstd, x2d.shape[0], x2d.stride(0), float(eps), K=k, BLOCK=min(4096, max(2, triton.next_power_of_2(k))), num_warps=4)
    return rstd


def quantize_rows_inline(
    x: torch.Tensor,
    bounds: torch.Tensor,
    block: int | None = None,
    num_warps: int | None = None,
    swiglu: bool = False,
    activation_out: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_rstd: torch.Tensor | None = None,
) -> QuantizedTensor:
    """OCC's ``inline`` operand of ``x`` [..., K] for scalar ``bounds`` = (low, high) in x's dtype:
    E4M3 elements (E2M1 values, the clamped entries as E4M3 of x / s) and fp32 row scales, one
    kernel, bit-identical to ``occ.quantize_with_inline_outliers_reference``. No packed codes:
    the E4M3 operand itself is what backward keeps (1 B per element).

    swiglu: x is the pre-activation [..., 2K] and the operand is that of swiglu(x) [..., K],
    computed in the same pass (``fused_inputs.swiglu_reference``: never written unless ``activation_out``).
    norm_weight, norm_rstd: the operand is that of RMSNorm(x) = (x * rstd) * weight rounded to x's
    dtype, with the given 1/rms per row (``rms_rstd``), computed in the same pass (whole rows)."""
    x2d, k, shape = _operand_rows(x, swiglu, activation_out, "quantize_rows_inline", (norm_weight, norm_rstd), block)
    rows = x2d.shape[0]
    out = torch.empty(rows, k, dtype=torch.uint8, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    bounds = bounds.reshape(2).to(x.dtype).float().contiguous()  # compare in the input's dtype, as the reference
    whole_row = max(2, triton.next_power_of_2(k))
    block = min(block, whole_row) if block else (whole_row if whole_row <= MAX_WHOLE_ROW else 1024)
    _quantize_rows_inline_kernel[(triton.cdiv(rows, ROWS_PER_PROGRAM),)](
        x2d, out, scale, bounds, activation_out if activation_out is not None else x2d, *_norm_args(norm_weight, norm_rstd, scale),
        rows, x2d.stride(0), K=k, R=ROWS_PER_PROGRAM, BLOCK=block, HARDWARE_CAST=hardware_fp8_cast(), SWIGLU=swiglu,
        STORE_ACTIVATION=activation_out is not None, NORM=norm_weight is not None,
        num_warps=num_warps or (4 if swiglu else row_warps(k, block >= k)),  # SwiGLU: 4 (loads gate and up; its measured setting)
    )
    data = out.view(torch.float8_e4m3fn)
    return QuantizedTensor(data, scale, None, ROW_SPEC, shape, x.dtype, fp8=data, outliers_e4m3=True)


def _norm_args(weight: torch.Tensor | None, rstd: torch.Tensor | None, placeholder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' (norm weight, rstd) pointers: the fused RMSNorm's, or any tensor when off."""
    return (weight.contiguous(), rstd) if weight is not None else (placeholder, placeholder)


def supports_spec(spec: QuantSpec) -> bool:
    return spec == ROW_SPEC


def quantize_rows(
    x: torch.Tensor,
    bounds: torch.Tensor | None = None,
    block: int | None = None,
    num_warps: int | None = None,
    rows_per_program: int | None = None,
    index_by_rounding: bool | None = None,
    swiglu: bool = False,
    activation_out: torch.Tensor | None = None,
    norm_weight: torch.Tensor | None = None,
    norm_rstd: torch.Tensor | None = None,
) -> QuantizedTensor:
    """Per-row E2M1 quantization of ``x`` [..., K] (optionally clamped to ``bounds`` = (low, high)).

    swiglu: x is the pre-activation [..., 2K] ([gate | up]) and the operand is that of swiglu(x)
    [..., K], computed in the same pass (``fused_inputs.swiglu_reference``, rounded to x's dtype, as the
    compiled SwiGLU rounds it); it is written to ``activation_out`` only if one is given.
    norm_weight, norm_rstd: likewise the operand of RMSNorm(x) (``quantize_rows_inline``), clamped
    after the norm.

    block: elements per step along K; by default rows up to ``MAX_WHOLE_ROW`` are held whole in
    registers (x read once), longer ones take two passes of 1024; rows_per_program: rows one
    program handles together; index_by_rounding: the E2M1 index by integer rounding of the fp32
    pattern (``_e2m1_round``) instead of seven comparisons (same result; the faster is the
    default). Every option changes speed only (defaults: benchmarks/NOTES.md).
    """
    x2d, k, shape = _operand_rows(x, swiglu, activation_out, "quantize_rows", (norm_weight, norm_rstd), block)
    if k % 2:
        raise ValueError(f"quantize_rows: operand shape {tuple(shape)} needs an even last dim to pack two FP4 codes per byte")
    rows = x2d.shape[0]
    fp8 = torch.empty(rows, k, dtype=torch.uint8, device=x.device)
    codes = torch.empty(rows, k // 2, dtype=torch.uint8, device=x.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x.device)
    if bounds is not None:
        bounds = bounds.to(x.dtype).float().contiguous()  # clamp in the input's dtype, as the reference
    whole_row = max(2, triton.next_power_of_2(k))
    block = min(block, whole_row) if block else (whole_row if whole_row <= MAX_WHOLE_ROW else 1024)
    per_program = rows_per_program or ROWS_PER_PROGRAM
    by_rounding = INDEX_BY_ROUNDING if index_by_rounding is None else index_by_rounding
    bounds_or_any = bounds if bounds is not None else scale
    _quantize_rows_kernel[(triton.cdiv(rows, per_program),)](
        x2d, fp8, codes, scale, bounds_or_any, activation_out if activation_out is not None else x2d, *_norm_args(norm_weight, norm_rstd, scale),
        rows, x2d.stride(0), K=k, HAS_CLAMP=bounds is not None, R=per_program, BLOCK=block, BY_ROUNDING=by_rounding,
        HARDWARE_CAST=hardware_fp8_cast(), SWIGLU=swiglu, STORE_ACTIVATION=activation_out is not None, NORM=norm_weight is not None,
        num_warps=num_warps or (4 if swiglu else row_warps(k, block >= k)),  # SwiGLU: 4 (loads gate and up; its measured setting)
    )
    return QuantizedTensor(codes, scale, None, ROW_SPEC, shape, x.dtype, fp8=fp8.view(torch.float8_e4m3fn))


def fp8_from_codes(codes: torch.Tensor) -> torch.Tensor:
    """Reference for the kernel's FP8 output: the decoded E2M1 values as E4M3 (exact)."""
    return decode(unpack_codes(codes), E2M1).to(torch.float8_e4m3fn)


def quantize_rows_reference(x: torch.Tensor, bounds: torch.Tensor | None = None) -> QuantizedTensor:
    """The PyTorch reference: clamp in x's dtype, then ``quantize`` per row; FP8 form from the codes."""
    x2d = x.reshape(-1, x.shape[-1])
    if bounds is not None:
        low, high = bounds.to(x.dtype)
        x2d = torch.maximum(torch.minimum(x2d, high), low)
    q = quantize(x2d, ROW_SPEC)
    return QuantizedTensor(q.data, q.scale, None, ROW_SPEC, x.shape, x.dtype, fp8=fp8_from_codes(q.data))
