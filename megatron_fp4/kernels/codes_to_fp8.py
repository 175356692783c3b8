"""Packed FP4 codes -> FP8 E4M3 elements, transposed: the backward GEMMs' B operands.

The forward keeps the weight and the activation as packed 4-bit codes (half a byte per element).
dgrad needs C_W^T [K, N] and wgrad C_X^T [K, M] as FP8 rows (the FP8 GEMM reads B column-major),
so one tiled pass unpacks, maps each E2M1 code to its exact E4M3 byte and writes the transpose.
Reference: ``codes_to_fp8_t_reference`` (tested bit for bit). ``bytes_t`` is the same tiled
transpose for an operand already held as FP8 bytes (OCC's ``inline`` activation).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .quantize_rows import _e4m3_byte, fp8_from_codes

__all__ = ["codes_to_fp8_t", "codes_to_fp8_t_reference", "bytes_t"]

BLOCK_ROWS, BLOCK_COLS = 64, 64


@triton.jit
def _codes_to_fp8_t_kernel(codes_ptr, out_ptr, R, C, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    half = tl.program_id(1) * (BC // 2) + tl.arange(0, BC // 2)
    mask = (rows[:, None] < R) & (half[None, :] < C // 2)
    packed = tl.load(codes_ptr + rows[:, None].to(tl.int64) * (C // 2) + half[None, :], mask=mask, other=0).to(tl.int32)
    codes = tl.interleave(packed & 0xF, packed >> 4)  # element 2i is the low nibble
    fp8 = (_e4m3_byte(codes & 7) | ((codes >> 3) << 7)).to(tl.uint8)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    out_mask = (cols[:, None] < C) & (rows[None, :] < R)
    tl.store(out_ptr + cols[:, None].to(tl.int64) * R + rows[None, :], tl.trans(fp8), mask=out_mask)


def codes_to_fp8_t(codes: torch.Tensor) -> torch.Tensor:
    """FP8 E4M3 [C, R] (contiguous) holding the transpose of the E2M1 values packed in ``codes`` [R, C/2]."""
    rows, columns = codes.shape[0], codes.shape[1] * 2
    codes = codes.contiguous()
    out = torch.empty(columns, rows, dtype=torch.uint8, device=codes.device)
    grid = (triton.cdiv(rows, BLOCK_ROWS), triton.cdiv(columns, BLOCK_COLS))
    _codes_to_fp8_t_kernel[grid](codes, out, rows, columns, BR=BLOCK_ROWS, BC=BLOCK_COLS)
    return out.view(torch.float8_e4m3fn)


def codes_to_fp8_t_reference(codes: torch.Tensor) -> torch.Tensor:
    return fp8_from_codes(codes).t().contiguous()


@triton.jit
def _bytes_t_kernel(in_ptr, out_ptr, R, C, BR: tl.constexpr, BC: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    tile = tl.load(in_ptr + rows[:, None].to(tl.int64) * C + cols[None, :], mask=(rows[:, None] < R) & (cols[None, :] < C), other=0)
    tl.store(out_ptr + cols[:, None].to(tl.int64) * R + rows[None, :], tl.trans(tile), mask=(cols[:, None] < C) & (rows[None, :] < R))


def bytes_t(data: torch.Tensor) -> torch.Tensor:
    """The transpose [C, R] (contiguous, same 1-byte dtype) of ``data`` [R, C], by one tiled kernel
    (the wgrad GEMM's B operand from an E4M3 activation); reference: ``data.t().contiguous()``."""
    if data.element_size() != 1 or data.dim() != 2:
        raise ValueError(f"bytes_t: expected a 2-D tensor of 1-byte elements, got {data.dtype} {tuple(data.shape)}")
    rows, columns = data.shape
    source = data.contiguous().view(torch.uint8)
    out = torch.empty(columns, rows, dtype=torch.uint8, device=data.device)
    _bytes_t_kernel[(triton.cdiv(rows, BLOCK_ROWS), triton.cdiv(columns, BLOCK_COLS))](source, out, rows, columns, BR=BLOCK_ROWS, BC=BLOCK_COLS)
    return out.view(data.dtype)
