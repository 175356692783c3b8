"""Rotary position embedding (RoPE) in one pass, forward and backward, with its PyTorch reference.

megatron-core's unfused RoPE (``_apply_rotary_pos_emb_bshd``) runs about ten bf16 kernels per
query or key tensor each way (the multiplies with broadcast cos/sin, the negation and ``cat`` of
``_rotate_half``, the add, the final ``cat``): ~10% of a BF16 transformer layer's GPU time at the
1.3B shape (benchmarks/NOTES.md, session 7). Here one kernel reads t once and writes the result
once, in each direction.

For t [s, b, h, d] and angles freqs [s, 1, 1, d] (non-interleaved halves, megatron-core's layout),
with c = cos(freqs), n = sin(freqs) computed in fp32 and x1, x2 the halves of t:

    forward:   y1 = x1 c1 - x2 n1          y2 = x2 c2 + x1 n2          (t c + rotate_half(t) n)
    backward:  g1' = g1 c1 + g2 n2         g2' = g2 c2 - g1 n1         (its transpose applied to g)

in fp32, rounded once to t's dtype. megatron-core's unfused path rounds cos/sin and every partial
product to bf16 first, so this is the more accurate of the two (tests: each within its rounding
bound of an fp64 evaluation). ``rope_reference`` is the same fp32 arithmetic in PyTorch (the CPU
path, bit for bit in Triton's interpreter); compiled, the kernel may contract a multiply-add into
an FMA, so the two agree to one unit in the last place of t's dtype plus ~2^-22 of the terms'
magnitudes (a sum that cancels), not always bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["rope_reference", "rope_triton", "cos_sin"]


def cos_sin(freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 cos and sin of the angles [s, 1, 1, d] as contiguous [s, d] tables."""
    angles = freqs.reshape(freqs.shape[0], freqs.shape[-1]).float()
    return torch.cos(angles).contiguous(), torch.sin(angles).contiguous()


def rope_reference(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """The kernel's arithmetic in PyTorch: t [s, b, h, d], cos/sin [s, d] fp32 -> [s, b, h, d] in t's dtype."""
    half = t.shape[-1] // 2
    x = t.float()
    x1, x2 = x[..., :half], x[..., half:]
    c = cos[:, None, None, :]
    n = sin[:, None, None, :]
    c1, c2, n1, n2 = c[..., :half], c[..., half:], n[..., :half], n[..., half:]
    if backward:
        out = torch.cat((x1 * c1 + x2 * n2, x2 * c2 - x1 * n1), dim=-1)
    else:
        out = torch.cat((x1 * c1 - x2 * n1, x2 * c2 + x1 * n2), dim=-1)
    return out.to(t.dtype)


@triton.jit
def _bf16_nearest(y):
    """fp32 -> the nearest bf16 value (ties to even), still as fp32, so the final conversion is exact:
    Triton's interpreter truncates fp32 -> bf16, the GPU rounds to nearest; this makes both round."""
    bits = y.to(tl.int32, bitcast=True)
    bits = (bits + (((bits >> 16) & 1) + 0x7FFF)) & -65536  # -65536 = 0xFFFF0000
    return tl.where(y != y, y, bits.to(tl.float32, bitcast=True))  # NaN stays NaN


@triton.jit
def _rope_kernel(t_ptr, cos_ptr, sin_ptr, out_ptr, B, H, stride_s, stride_b, stride_h,
                 HALF: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr, BACKWARD: tl.constexpr, ROUND_BF16: tl.constexpr):
    """One (position, batch) pair and BLOCK_H heads per program; the last dimension of t is contiguous."""
    position_batch = tl.program_id(0)
    s = position_batch // B
    b = position_batch % B
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    d_mask = d < HALF
    table = s.to(tl.int64) * (2 * HALF)
    c1 = tl.load(cos_ptr + table + d, mask=d_mask, other=0.0)[None, :]
    c2 = tl.load(cos_ptr + table + HALF + d, mask=d_mask, other=0.0)[None, :]
    n1 = tl.load(sin_ptr + table + d, mask=d_mask, other=0.0)[None, :]
    n2 = tl.load(sin_ptr + table + HALF + d, mask=d_mask, other=0.0)[None, :]
    mask = (heads[:, None] < H) & d_mask[None, :]
    source = t_ptr + s.to(tl.int64) * stride_s + b.to(tl.int64) * stride_b + heads[:, None].to(tl.int64) * stride_h + d[None, :]
    x1 = tl.load(source, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(source + HALF, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        y1 = x1 * c1 + x2 * n2
        y2 = x2 * c2 - x1 * n1
    else:
        y1 = x1 * c1 - x2 * n1
        y2 = x2 * c2 + x1 * n2
    if ROUND_BF16:
        y1 = _bf16_nearest(y1)
        y2 = _bf16_nearest(y2)
    target = out_ptr + (position_batch.to(tl.int64) * H + heads[:, None].to(tl.int64)) * (2 * HALF) + d[None, :]
    tl.store(target, y1.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(target + HALF, y2.to(out_ptr.dtype.element_ty), mask=mask)


def rope_triton(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool = False) -> torch.Tensor:
    """``rope_reference`` in one kernel: t [s, b, h, d] (any strides, last dimension contiguous,
    d even), cos/sin [s, d] fp32 contiguous; returns a contiguous [s, b, h, d] tensor."""
    s, b, h, d = t.shape
    if d % 2 or t.stride(-1) != 1:
        raise ValueError(f"rope_triton: needs an even head dimension with unit stride, got shape {tuple(t.shape)} strides {t.stride()}")
    if cos.shape != (s, d) or sin.shape != (s, d):
        raise ValueError(f"rope_triton: cos/sin must be [{s}, {d}], got {tuple(cos.shape)} / {tuple(sin.shape)}")
    out = torch.empty((s, b, h, d), dtype=t.dtype, device=t.device)
    if out.numel() == 0:
        return out
    half = d // 2
    block_h = min(triton.next_power_of_2(h), max(1, 4096 // triton.next_power_of_2(half)))
    grid = (s * b, triton.cdiv(h, block_h))
    _rope_kernel[grid](
        t, cos, sin, out, b, h, t.stride(0), t.stride(1), t.stride(2),
        HALF=half, BLOCK_D=triton.next_power_of_2(half), BLOCK_H=block_h, BACKWARD=backward,
        ROUND_BF16=t.dtype == torch.bfloat16, num_warps=4,
    )
    return out
