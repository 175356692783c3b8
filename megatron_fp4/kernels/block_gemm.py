"""Block-scaled FP4 GEMM on BF16 tensor cores: C = A B^T for packed E2M1 operands with block scales.

Hopper has no FP4 tensor cores and its FP8 GEMM cannot apply scales that vary along the
reduction dimension (NVFP4/MXFP4 block scales do). But an E2M1 value (2 significant bits) times
an E4M3 block scale (4 significant bits) or an E8M0 power of two is exact in BF16 (8 significant
bits). So each program loads a tile of packed codes and its block scales, forms the operand in BF16
in registers, and runs ``tl.dot`` with fp32 accumulation; the fp32 NVFP4 tensor scales multiply
the result once at the end. The products are exact, so the result equals the reference
(dequantize both, fp32 matmul) up to the fp32 accumulation order.

Operands are ``QuantizedTensor`` s quantized along the GEMM's reduction dimension K: A [M, K] and
B [N, K], granularity ``nvfp4`` (1x16 E4M3), ``nvfp4_2d`` (16x16 tiles) or ``mxfp4`` (1x32 E8M0).
The three GEMMs of a linear map onto it: fprop Q(X) Q(W)^T; dgrad Q(dY) Q(W^T)^T with W's 16x16
tiles read transposed (``transpose_2d``: the tiles are the same values either way); wgrad with
both operands quantized along the tokens, Q(dY^T) Q(X^T)^T.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..quantize import QuantizedTensor
from .quantize_blocks import _e4m3_value, _power_of_two

__all__ = ["block_scaled_matmul", "supports_block_gemm", "transpose_2d"]

GRANULARITY_CODES = {"nvfp4": 0, "nvfp4_2d": 1, "mxfp4": 2}


def supports_block_gemm(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    return (
        a.spec.dtype == b.spec.dtype == "fp4" and a.scale is not None and b.scale is not None
        and a.spec.granularity in GRANULARITY_CODES and b.spec.granularity in GRANULARITY_CODES
        and a.spec.format.name == b.spec.format.name == "e2m1"
    )


@triton.jit
def _e2m1_value(code):
    """fp32 value of a 4-bit E2M1 code (sign << 3 | index into 0, .5, 1, 1.5, 2, 3, 4, 6)."""
    index = code & 7
    exponent = index >> 1
    mantissa = (index & 1).to(tl.float32)
    normal = (2.0 + mantissa) * _power_of_two(exponent - 2)  # (1 + m/2) 2^(e-1)
    magnitude = tl.where(exponent == 0, mantissa * 0.5, normal)
    return tl.where((code & 8) != 0, -magnitude, magnitude)


@triton.jit
def _block_scale(scale_ptr, rows, k_offsets, n_rows, K, stride_scale, GRANULARITY: tl.constexpr):
    """The fp32 block scale of every (row, k) of a tile (before the NVFP4 tensor scale)."""
    if GRANULARITY == 1:  # 16x16 tiles: scale[row // 16, k // 16]
        pointers = scale_ptr + (rows // 16)[:, None] * stride_scale + (k_offsets // 16)[None, :]
    elif GRANULARITY == 0:
        pointers = scale_ptr + rows[:, None] * stride_scale + (k_offsets // 16)[None, :]
    else:
        pointers = scale_ptr + rows[:, None] * stride_scale + (k_offsets // 32)[None, :]
    mask = (rows[:, None] < n_rows) & (k_offsets[None, :] < K)
    byte = tl.load(pointers, mask=mask, other=0).to(tl.int32)
    if GRANULARITY == 2:
        return tl.where(byte == 0xFF, float("nan"), _power_of_two(byte - 127))
    return _e4m3_value(byte)


@triton.jit
def _operand_tile(codes_ptr, scale_ptr, rows, k0, n_rows, K, stride_codes, stride_scale, GRANULARITY: tl.constexpr, BK: tl.constexpr, AS_BF16: tl.constexpr = True):
    """A [rows, BK] tile of an operand in BF16: E2M1 codes times block scales (exact in BF16);
    fp32 with AS_BF16=False (Triton's CPU interpreter computes bf16 dots wrongly; the values are the
    same, so the products are too)."""
    half = k0 // 2 + tl.arange(0, BK // 2)
    mask = (rows[:, None] < n_rows) & (half[None, :] < K // 2)
    packed = tl.load(codes_ptr + rows[:, None] * stride_codes + half[None, :], mask=mask, other=0).to(tl.int32)
    codes = tl.join(packed & 0xF, packed >> 4).reshape(rows.shape[0], BK)  # element 2i: low nibble
    k_offsets = k0 + tl.arange(0, BK)
    values = _e2m1_value(codes) * _block_scale(scale_ptr, rows, k_offsets, n_rows, K, stride_scale, GRANULARITY)
    if AS_BF16:
        return values.to(tl.bfloat16)
    return values


@triton.jit
def _block_gemm_kernel(
    a_codes, a_scale, b_codes, b_scale, c_ptr, global_scale,
    M, N, K, stride_ac, stride_as, stride_bc, stride_bs, stride_c,
    A_GRANULARITY: tl.constexpr, B_GRANULARITY: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
    AS_BF16: tl.constexpr,
):
    rows_a = tl.program_id(0) * BM + tl.arange(0, BM)
    rows_b = tl.program_id(1) * BN + tl.arange(0, BN)
    accumulator = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = _operand_tile(a_codes, a_scale, rows_a, k0, M, K, stride_ac, stride_as, A_GRANULARITY, BK, AS_BF16)
        b = _operand_tile(b_codes, b_scale, rows_b, k0, N, K, stride_bc, stride_bs, B_GRANULARITY, BK, AS_BF16)
        if AS_BF16:
            accumulator = tl.dot(a, tl.trans(b), accumulator)
        else:
            accumulator = tl.dot(a, tl.trans(b), accumulator, input_precision="ieee")
    accumulator = accumulator * tl.load(global_scale)
    mask = (rows_a[:, None] < M) & (rows_b[None, :] < N)
    tl.store(c_ptr + rows_a[:, None] * stride_c + rows_b[None, :], accumulator.to(c_ptr.dtype.element_ty), mask=mask)


def _scale_bytes(q: QuantizedTensor) -> torch.Tensor:
    return q.scale.view(torch.uint8) if q.scale.dtype == torch.float8_e4m3fn else q.scale


def block_scaled_matmul(a: QuantizedTensor, b: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """A B^T [M, N] for block-scaled FP4 operands A [M, K], B [N, K] (see the module docstring)."""
    if not supports_block_gemm(a, b):
        raise ValueError(f"block_scaled_matmul: needs FP4 E2M1 operands in {sorted(GRANULARITY_CODES)} blocks, got {a.spec.describe()} and {b.spec.describe()}")
    m, k = a.data.shape[0], a.data.shape[1] * 2
    n = b.data.shape[0]
    if b.data.shape[1] * 2 != k or k % 32 and "mxfp4" in (a.spec.granularity, b.spec.granularity):
        raise ValueError(f"block_scaled_matmul: reduction sizes {k} and {b.data.shape[1] * 2} differ or do not fit the blocks")
    global_scale = torch.ones((), dtype=torch.float32, device=a.data.device)
    for operand in (a, b):
        if operand.global_scale is not None:
            global_scale = global_scale * operand.global_scale.float()
    c = torch.empty(m, n, dtype=out_dtype, device=a.data.device)
    block_m, block_n, block_k = 64, 64, 64
    a_scale, b_scale = _scale_bytes(a), _scale_bytes(b)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _block_gemm_kernel[grid](
        a.data, a_scale, b.data, b_scale, c, global_scale.reshape(1),
        m, n, k, a.data.stride(0), a_scale.stride(0), b.data.stride(0), b_scale.stride(0), c.stride(0),
        A_GRANULARITY=GRANULARITY_CODES[a.spec.granularity], B_GRANULARITY=GRANULARITY_CODES[b.spec.granularity],
        BM=block_m, BN=block_n, BK=block_k, AS_BF16=os.environ.get("TRITON_INTERPRET") != "1",
    )
    return c


def transpose_2d(q: QuantizedTensor) -> QuantizedTensor:
    """A 16x16-tiled operand W [N, K] as W^T [K, N]: the codes transposed and repacked, the tile
    scales transposed; the values are exactly those of quantizing W^T (the tiles are symmetric)."""
    if q.spec.granularity != "nvfp4_2d":
        raise ValueError(f"transpose_2d: needs nvfp4_2d tiles, got {q.spec.granularity}")
    from ..formats import pack_codes, unpack_codes

    codes = unpack_codes(q.data).t().contiguous()
    return QuantizedTensor(pack_codes(codes), q.scale.t().contiguous(), q.global_scale, q.spec, torch.Size((q.data.shape[1] * 2, q.data.shape[0])), q.dtype)
