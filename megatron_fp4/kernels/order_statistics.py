"""OCC's tensor-scope clamp bounds in two launches: order statistics of 16-bit values by radix selection.

OCC clamps at the α and 1-α quantiles of the activation (or of a fixed-seed sample of it,
``megatron_fp4.occ``). The reference takes them with ``torch.sort`` of the values in fp32: on a
GPU a gather, a cast, a radix sort of several launches, two casts back and a stack: ~15 of the 32
kernels of a `paper` linear's fwd+bwd and ~0.2 ms of its host time (benchmarks/NOTES.md, session
14: 32 -> 17 kernels, 1859 -> 1641 us). Here two small launches select them directly from the
16-bit values (bf16 or fp16, the dtype the clamp compares in), gathering the sample themselves:

  key(u) = ~u for negative bit patterns u, u | 0x8000 for positive ones (integer order of keys is
  the order of the values), NaN -> 0xFFFF (``torch.sort`` puts every NaN last);
  pass 1 (launch 1): a histogram of the keys' high bytes, each program adding its chunk's;
  pass 2 (launch 2): the running count of that histogram finds each rank's high byte; the
  histograms of the low bytes of the keys with that high byte, summed the same way; the last
  program (an acquire-release ticket) finds the key in them, hence the value.

The values are exact (the order statistic of 16-bit values is one of them; ``float()`` and the
cast back are exact), so the bounds equal the reference's as numbers: bit for bit except that
-0.0 and +0.0, equal for the sort, are distinct keys here (either is a correct order statistic;
as a clamp bound they act alike), and a NaN bound is the canonical NaN. ``symmetric`` takes the
α quantile of |x| and returns (-high, high), as the reference. The sample is read twice (2^18
values: 128 programs of one 2048-value step each); the scratch histograms are a fresh zeroed
allocation per call (no state between calls or streams); nothing leaves the device, so it runs
inside a CUDA-graph capture.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fp8_rounding import hardware_fp8_cast
from .quantize_rows import _rounded_to

__all__ = ["order_statistic_bounds", "supports_order_statistics"]

BLOCK = 2048  # values per histogram step: 16 per thread with 4 warps
NUM_WARPS = 4
MAX_PROGRAMS = 128  # a 2^18 sample: 128 programs of one step each
SCRATCH_SIZE = 769  # [0:256] high bytes, [256:512] / [512:768] low bytes per rank, [768] ticket
DTYPE_CODES = {torch.bfloat16: 0, torch.float16: 1}
MAX_INDEX = 2**31 - 2 * BLOCK  # int32 offsets, with a step's padding past the end


def _extent(values: torch.Tensor, norm) -> int:
    """Elements the kernels address: the flat values, or with ``norm`` x's rows at their stride."""
    if norm is None or values.dim() != 2 or values.numel() == 0:
        return values.numel()
    return (values.shape[0] - 1) * values.stride(0) + values.shape[1]


def supports_order_statistics(values: torch.Tensor, norm=None) -> bool:
    """Whether the kernels take ``values``: 16-bit floats (the activation dtypes OCC's bounds are
    compared in), at least one value, addresses within the kernels' int32 indexing, and with
    ``norm`` a 2-D tensor with unit column stride. Where not, OCC sorts (``occ._tensor_thresholds``)."""
    shape_ok = norm is None or (values.dim() == 2 and values.stride(-1) == 1)
    return values.dtype in DTYPE_CODES and values.numel() > 0 and shape_ok and _extent(values, norm) < MAX_INDEX


@triton.jit
def _keys(bits, index, n, IS_FP16: tl.constexpr, ABS: tl.constexpr):
    """Order-preserving 16-bit keys of 16-bit float bit patterns (int32 0..65535); NaN and the
    padding past n sort last (0xFFFF, never reached by a rank <= n that lands on a value)."""
    u = bits.to(tl.int32) & 0xFFFF
    magnitude = u & 0x7FFF
    infinity_bits: tl.constexpr = 0x7C00 if IS_FP16 else 0x7F80
    if ABS:
        key = magnitude | 0x8000
    else:
        key = tl.where(u >= 0x8000, (~u) & 0xFFFF, u | 0x8000)
    return tl.where((magnitude > infinity_bits) | (index >= n), 0xFFFF, key)


@triton.jit
def _select_byte(histogram, rank):
    """(byte b, count below b): the first b whose running count reaches ``rank`` (1-based)."""
    running = tl.cumsum(histogram, 0)
    below = tl.sum((running < rank).to(tl.int32), 0)
    count_below = tl.sum(tl.where(running < rank, histogram, 0), 0)
    return below, count_below


@triton.jit
def _value_bits(key, ABS: tl.constexpr):
    """The 16-bit float bit pattern of a key (the inverse of ``_keys`` for non-NaN keys)."""
    if ABS:
        return key & 0x7FFF
    return tl.where(key >= 0x8000, key & 0x7FFF, (~key) & 0xFFFF)


@triton.jit
def _sample_bits(values_ptr, positions_ptr, rstd_ptr, weight_ptr, index, n, K, stride,
                 IS_FP16: tl.constexpr, GATHER: tl.constexpr, NORM: tl.constexpr, HARDWARE_CAST: tl.constexpr):
    """The 16-bit patterns (in int32, sign-extended) of the values ranked: values[index], or with GATHER values at
    positions[index] (OCC's fixed-seed sample); with NORM those of RMSNorm(x) at those flat
    positions of x [rows, K] (row stride ``stride``): (x * rstd[row]) * weight[col] in fp32,
    rounded once to x's dtype, ``fused_inputs.rms_norm_occ_bounds``'s values."""
    valid = index < n
    if GATHER:
        where = tl.load(positions_ptr + index, mask=valid, other=0).to(tl.int32)  # < 2^31 values (checked)
    else:
        where = index
    if not NORM:
        return tl.load(values_ptr + where, mask=valid, other=0).to(tl.int32)
    row = where // K
    col = where % K
    bits = tl.load(values_ptr + row * stride + col, mask=valid, other=0)
    dtype: tl.constexpr = tl.float16 if IS_FP16 else tl.bfloat16
    rstd = tl.load(rstd_ptr + row, mask=valid, other=1.0)
    weight = tl.load(weight_ptr + col, mask=valid, other=0.0).to(tl.float32)
    normalized = _rounded_to(bits.to(dtype, bitcast=True).to(tl.float32) * rstd * weight, dtype, HARDWARE_CAST)
    if IS_FP16:
        return normalized.to(tl.float16).to(tl.int16, bitcast=True).to(tl.int32)
    return normalized.to(tl.int32, bitcast=True) >> 16  # rounded to bf16: the low 16 bits are zero


@triton.jit
def _chunk_histogram(
    values_ptr, positions_ptr, rstd_ptr, weight_ptr, n, K, stride, chunk, bucket, SHIFT: tl.constexpr,
    IS_FP16: tl.constexpr, ABS: tl.constexpr, GATHER: tl.constexpr, NORM: tl.constexpr, HARDWARE_CAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """This program's histogram (512 bins) of its chunk of keys: SHIFT 8, the high bytes; SHIFT 0,
    the low bytes of the keys whose high byte is ``bucket`` (the others go to bin 256, never
    selected; 512 bins, a power of two)."""
    histogram = tl.zeros((512,), dtype=tl.int32)
    first = tl.program_id(0) * chunk
    for start in range(first, tl.minimum(first + chunk, n), BLOCK):
        index = start + tl.arange(0, BLOCK)
        bits = _sample_bits(values_ptr, positions_ptr, rstd_ptr, weight_ptr, index, n, K, stride, IS_FP16, GATHER, NORM, HARDWARE_CAST)
        key = _keys(bits, index, n, IS_FP16, ABS)
        if SHIFT == 8:
            histogram += tl.histogram(key >> 8, 512)
        else:
            histogram += tl.histogram(tl.where((key >> 8) == bucket, key & 0xFF, 256), 512)
    return histogram


@triton.jit
def _high_bytes_kernel(
    values_ptr, positions_ptr, rstd_ptr, weight_ptr, scratch_ptr, n, K, stride, chunk,
    IS_FP16: tl.constexpr, ABS: tl.constexpr, GATHER: tl.constexpr, NORM: tl.constexpr, HARDWARE_CAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 1: the histogram of the keys' high bytes, summed over programs into scratch[0:256]."""
    bins = tl.arange(0, 512)
    histogram = _chunk_histogram(values_ptr, positions_ptr, rstd_ptr, weight_ptr, n, K, stride, chunk, 0, 8, IS_FP16, ABS, GATHER, NORM, HARDWARE_CAST, BLOCK)
    tl.atomic_add(scratch_ptr + bins, histogram, mask=bins < 256, sem="relaxed")


@triton.jit
def _low_bytes_kernel(
    values_ptr, positions_ptr, rstd_ptr, weight_ptr, scratch_ptr, out_ptr, n, K, stride, chunk, rank_low, rank_high,
    IS_FP16: tl.constexpr, ABS: tl.constexpr, GATHER: tl.constexpr, NORM: tl.constexpr, HARDWARE_CAST: tl.constexpr, BLOCK: tl.constexpr,
):
    """Pass 2: each rank's high byte from scratch[0:256], the low-byte histograms of its bucket
    summed into scratch[256:512] (rank_high) and [512:768] (rank_low); the program holding the
    last ticket (scratch[768], acquire-release: every other program's sums are visible to it)
    turns them into the two values, written as 16-bit patterns to out[0] (low) and out[1] (high)."""
    bins = tl.arange(0, 512)
    high_bytes = tl.load(scratch_ptr + bins, mask=bins < 256, other=0)
    bucket_high, below_high = _select_byte(high_bytes, rank_high)
    bucket_low, below_low = _select_byte(high_bytes, rank_low)
    tl.atomic_add(scratch_ptr + 256 + bins, _chunk_histogram(values_ptr, positions_ptr, rstd_ptr, weight_ptr, n, K, stride, chunk, bucket_high, 0, IS_FP16, ABS, GATHER, NORM, HARDWARE_CAST, BLOCK), mask=bins < 256, sem="relaxed")
    if not ABS:
        tl.atomic_add(scratch_ptr + 512 + bins, _chunk_histogram(values_ptr, positions_ptr, rstd_ptr, weight_ptr, n, K, stride, chunk, bucket_low, 0, IS_FP16, ABS, GATHER, NORM, HARDWARE_CAST, BLOCK), mask=bins < 256, sem="relaxed")
    tl.debug_barrier()  # this program's sums are issued before its ticket
    if tl.atomic_add(scratch_ptr + 768, 1, sem="acq_rel") == tl.num_programs(0) - 1:
        in_high = tl.load(scratch_ptr + 256 + bins, mask=bins < 256, other=0, volatile=True)
        key_high = bucket_high * 256 + _select_byte(in_high, rank_high - below_high)[0]
        nan_bits: tl.constexpr = 0x7E00 if IS_FP16 else 0x7FC0
        high_bits = tl.where(key_high == 0xFFFF, nan_bits, _value_bits(key_high, ABS))
        if ABS:
            low_bits = high_bits ^ 0x8000  # -high (a NaN stays a NaN)
        else:
            in_low = tl.load(scratch_ptr + 512 + bins, mask=bins < 256, other=0, volatile=True)
            key_low = bucket_low * 256 + _select_byte(in_low, rank_low - below_low)[0]
            low_bits = tl.where(key_low == 0xFFFF, nan_bits, _value_bits(key_low, ABS))
        out = out_ptr.to(tl.pointer_type(tl.int16))
        tl.store(out, low_bits.to(tl.int16))
        tl.store(out + 1, high_bits.to(tl.int16))


def order_statistic_bounds(
    values: torch.Tensor, rank_low: int, rank_high: int, symmetric: bool, positions: torch.Tensor | None = None,
    norm: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """[2] tensor in values' dtype: (the rank_low-th, the rank_high-th smallest value) of the flat
    16-bit ``values``, or of its values at the flat ``positions`` (int64, OCC's sample); ranks
    1-based. symmetric: (-v, v) for v the rank_high-th smallest |value| (rank_low unused). norm =
    (weight [K], rstd [rows] fp32): rank RMSNorm(values) for values [rows, K] instead, computed at
    the positions (``fused_inputs.rms_norm_occ_bounds``). Equal as numbers to
    ``torch.sort(values.float())`` at those ranks (see the module docstring for zeros' sign and NaN)."""
    if values.dtype not in DTYPE_CODES or values.numel() == 0:
        raise ValueError(f"order_statistic_bounds: needs a non-empty bf16/fp16 tensor, got {values.dtype} with {values.numel()} values")
    if norm is not None and (values.dim() != 2 or values.stride(-1) != 1):
        raise ValueError(f"order_statistic_bounds: norm needs 2-D values with unit column stride, got {tuple(values.shape)} strides {values.stride()}")
    if not supports_order_statistics(values, norm):
        raise ValueError(f"order_statistic_bounds: {_extent(values, norm)} addressed values exceed the kernels' int32 indexing ({MAX_INDEX})")
    k, stride = (values.shape[1], values.stride(0)) if norm is not None else (1, 1)
    flat = values if norm is not None else values.reshape(-1)
    n = values.numel() if positions is None else positions.numel()
    if n >= MAX_INDEX:
        raise ValueError(f"order_statistic_bounds: {n} positions exceed the kernels' int32 indexing ({MAX_INDEX})")
    for name, rank in (("rank_low", rank_low), ("rank_high", rank_high)):
        if not 1 <= rank <= n:
            raise ValueError(f"order_statistic_bounds: {name}={rank} outside 1..{n}")
    out = torch.empty(2, dtype=values.dtype, device=values.device)
    scratch = torch.zeros(SCRATCH_SIZE, dtype=torch.int32, device=values.device)  # one memset; nothing shared between calls
    programs = min(triton.cdiv(n, BLOCK), MAX_PROGRAMS)
    chunk = triton.cdiv(triton.cdiv(n, programs), BLOCK) * BLOCK
    programs = triton.cdiv(n, chunk)
    layout = dict(
        IS_FP16=DTYPE_CODES[values.dtype] == 1, ABS=symmetric, GATHER=positions is not None, NORM=norm is not None,
        HARDWARE_CAST=hardware_fp8_cast(), BLOCK=BLOCK, num_warps=NUM_WARPS,
    )
    keys = flat.view(torch.int16)
    where = positions if positions is not None else keys  # (unused without positions)
    weight, rstd = norm if norm is not None else (keys, scratch)  # (unused without norm)
    _high_bytes_kernel[(programs,)](keys, where, rstd, weight, scratch, n, k, stride, chunk, **layout)
    _low_bytes_kernel[(programs,)](keys, where, rstd, weight, scratch, out, n, k, stride, chunk, rank_low, rank_high, **layout)
    return out
