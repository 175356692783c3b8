"""Round fp32 to FP8 (and bf16) in Triton, bit for bit as ``tensor.to(torch.float8_*)`` does.

Triton's own fp8 casts differ between the compiled and the interpreted backends, so the kernels
build the FP8 byte themselves from integer operations: round to nearest, ties to even, with
subnormals, signed zero and the formats' overflow rules (E5M2 overflows to Inf, E4M3FN saturates
to 448 as PyTorch's cast does; NaN stays NaN).
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

__all__ = ["fp8_byte", "fp8_cast", "hardware_fp8_cast", "round_to_bf16"]


def hardware_fp8_cast() -> bool:
    """Whether kernels may use the GPU's FP8 conversion instruction: compiled, yes; in Triton's
    interpreter (CPU tests) its casts differ, so the kernels build the byte with ``fp8_byte``."""
    return os.environ.get("TRITON_INTERPRET") != "1"


@triton.jit
def fp8_byte(v, MANTISSA: tl.constexpr, BIAS: tl.constexpr, E4M3FN: tl.constexpr):
    """FP8 bit pattern (int32 in [0, 255]) of fp32 ``v``: E5M2 (2, 15, False) or E4M3FN (3, 7, True)."""
    bits = v.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80
    magnitude = tl.abs(v)
    # subnormal range: adding 2^(24 - BIAS - MANTISSA) makes the fp32 ulp one FP8 subnormal step,
    # so the hardware addition rounds to nearest even onto that step
    offset: tl.constexpr = 2.0 ** (24 - BIAS - MANTISSA)
    per_step: tl.constexpr = 2.0 ** (BIAS + MANTISSA - 1)
    steps = ((magnitude + offset) - offset) * per_step
    subnormal = steps.to(tl.int32)  # 2^MANTISSA means "rounded up to the smallest normal": same byte
    # normal range: round the fp32 mantissa to MANTISSA bits, ties to even, in the integer domain
    drop: tl.constexpr = 23 - MANTISSA
    magnitude_bits = bits & 0x7FFFFFFF
    rounded = magnitude_bits + ((1 << (drop - 1)) - 1) + ((magnitude_bits >> drop) & 1)
    exponent = (rounded >> 23) - 127 + BIAS
    normal = (exponent << MANTISSA) | ((rounded >> drop) & ((1 << MANTISSA) - 1))
    smallest_normal: tl.constexpr = 2.0 ** (1 - BIAS)
    is_subnormal = magnitude < smallest_normal
    byte = tl.where(is_subnormal, subnormal, normal)
    if E4M3FN:  # no Inf: finite overflow and Inf saturate to 448 (0x7E)
        byte = tl.where((byte > 0x7E) | (magnitude == float("inf")), 0x7E, byte)
    else:  # E5M2: exponent field 31 is Inf
        byte = tl.where((byte > 0x7C) | (magnitude == float("inf")), 0x7C, byte)
    byte = tl.where(v != v, 0x7F, byte)
    return byte | sign


@triton.jit
def fp8_cast(v, MANTISSA: tl.constexpr, BIAS: tl.constexpr, E4M3FN: tl.constexpr, HARDWARE_CAST: tl.constexpr):
    """FP8 byte (int32) of v: the GPU's conversion instruction (round to nearest even, saturating:
    the same bytes as PyTorch's cast for every |v| up to the format's max), or ``fp8_byte``."""
    if HARDWARE_CAST:
        if E4M3FN:
            return v.to(tl.float8e4nv).to(tl.uint8, bitcast=True).to(tl.int32)
        return v.to(tl.float8e5).to(tl.uint8, bitcast=True).to(tl.int32)
    return fp8_byte(v, MANTISSA, BIAS, E4M3FN)


@triton.jit
def round_to_bf16(v):
    """fp32 holding ``v`` rounded to bfloat16 (nearest, ties to even), so a later cast is exact
    (the interpreter's casts truncate; compiled ones round: this makes both the same)."""
    bits = v.to(tl.int32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536  # -65536 == 0xFFFF0000
    return tl.where(v != v, v, rounded.to(tl.float32, bitcast=True))
