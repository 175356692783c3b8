"""OCC residual ΔA = A - clamp(A, low, high) as FP8 E4M3 with one scale per row, in one kernel.

For the ``fp8`` compensation (``megatron_fp4.occ.FP8Residual``): each row of A is read once
(twice for rows longer than 4096: an absmax pass, then a quantize pass), the residual formed in
fp32 (exact for 16-bit inputs), its row absmax taken, and the row written as E4M3 elements of
ΔA · (1 / scale) with scale = absmax / 448 (1 for a row without outliers), next to the fp32
scales. No dense fp32 copy of ΔA, no ``nonzero``, no host synchronisation. The reference is
``fp8_residual_reference``; the test compares them bit for bit (the compiled kernel uses the
GPU's FP8 conversion, the interpreter the integer construction; both round to nearest even).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .fp8_rounding import fp8_cast, hardware_fp8_cast
from .quantize_rows import _max_keeping_nan

__all__ = ["fp8_residual", "fp8_residual_reference", "fp8_rows_fused"]

E4M3_MAX = 448.0
MAX_WHOLE_ROW = 4096


@triton.jit
def _excess(x_ptr, rows, cols, M, K, stride_x, low, high, CLAMP: tl.constexpr):
    mask = (rows[:, None] < M) & (cols[None, :] < K)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if not CLAMP:  # the whole row: fp8_rows
        return x
    # the bounds hold values of A's dtype (rounded by the caller), so clamping in fp32 is the same
    clamped = tl.maximum(tl.minimum(x, high, propagate_nan=tl.PropagateNan.ALL), low, propagate_nan=tl.PropagateNan.ALL)
    return x - clamped


@triton.jit
def _store_fp8(excess, multiplier, rows, cols, out_ptr, M, K, HARDWARE_CAST: tl.constexpr):
    byte = fp8_cast(excess * multiplier, 3, 7, True, HARDWARE_CAST).to(tl.uint8)
    tl.store(out_ptr + rows[:, None] * K + cols[None, :], byte, mask=(rows[:, None] < M) & (cols[None, :] < K))


@triton.jit
def _fp8_residual_kernel(
    x_ptr, bounds_ptr, out_ptr, scale_ptr, M, K, stride_x,
    BLOCK: tl.constexpr, WHOLE_ROW: tl.constexpr, HARDWARE_CAST: tl.constexpr, CLAMP: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) + tl.arange(0, 1)
    if CLAMP:
        low = tl.load(bounds_ptr)
        high = tl.load(bounds_ptr + 1)
    else:
        low = 0.0
        high = 0.0
    if WHOLE_ROW:
        cols = tl.arange(0, BLOCK)
        excess = _excess(x_ptr, rows, cols, M, K, stride_x, low, high, CLAMP)
        amax = tl.reduce(tl.abs(excess), 1, _max_keeping_nan)
    else:
        amax = tl.zeros((1,), dtype=tl.float32)
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            amax = _max_keeping_nan(amax, tl.reduce(tl.abs(_excess(x_ptr, rows, cols, M, K, stride_x, low, high, CLAMP)), 1, _max_keeping_nan))
    scale = tl.where(amax > 0, tl.math.div_rn(amax, 448.0), 1.0)
    scale = tl.where((amax != amax) | (amax == float("inf")), float("nan"), scale)
    tl.store(scale_ptr + rows, scale)
    multiplier = tl.math.div_rn(1.0, scale)[:, None]
    if WHOLE_ROW:
        _store_fp8(excess, multiplier, rows, cols, out_ptr, M, K, HARDWARE_CAST)
    else:
        for start in range(0, K, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            _store_fp8(_excess(x_ptr, rows, cols, M, K, stride_x, low, high, CLAMP), multiplier, rows, cols, out_ptr, M, K, HARDWARE_CAST)


def fp8_residual(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 [rows, K], fp32 scales [rows, 1]) of ΔA = x2d - clamp(x2d, low, high), scalar bounds."""
    if low.numel() != 1 or high.numel() != 1:
        raise ValueError("fp8_residual: the kernel takes tensor-scope (scalar) bounds; per-row bounds use fp8_residual_reference")
    bounds = torch.stack([low.reshape(()), high.reshape(())]).to(x2d.dtype).float()  # clamp in A's dtype, as the reference
    return _launch(x2d, bounds)


def fp8_rows_fused(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 [rows, K], fp32 scales [rows, 1]) of x2d itself, absmax / 448 per row: the weight's
    form for the FP8 compensation GEMM (``megatron_fp4.occ.fp8_rows`` is the reference). One read
    of W and a 1-byte write, where the PyTorch form made six passes over an fp32 copy."""
    return _launch(x2d, None)


def _launch(x2d: torch.Tensor, bounds: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if x2d.dim() != 2:
        raise ValueError(f"fp8 row quantizer: expected a 2-D tensor, got shape {tuple(x2d.shape)}")
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    rows, k = x2d.shape
    out = torch.empty(rows, k, dtype=torch.uint8, device=x2d.device)
    scale = torch.empty(rows, 1, dtype=torch.float32, device=x2d.device)
    whole = triton.next_power_of_2(k) <= MAX_WHOLE_ROW
    block = triton.next_power_of_2(k) if whole else 1024
    _fp8_residual_kernel[(rows,)](
        x2d, bounds if bounds is not None else scale, out, scale, rows, k, x2d.stride(0),
        BLOCK=block, WHOLE_ROW=whole, HARDWARE_CAST=hardware_fp8_cast(), CLAMP=bounds is not None, num_warps=8 if block >= 4096 else 4,
    )
    return out.view(torch.float8_e4m3fn), scale


def fp8_residual_reference(x2d: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The PyTorch reference: clamp in A's dtype, residual in fp32, E4M3 per row (amax / 448,
    encoded by the reciprocal as ``quantize`` does; NaN/Inf rows get a NaN scale)."""
    from ..quantize import encode_multiplier
    from ..scaling import absmax_scale

    excess = x2d.float() - torch.maximum(torch.minimum(x2d, high.to(x2d.dtype)), low.to(x2d.dtype)).float()
    scale = absmax_scale(excess.abs().amax(dim=-1, keepdim=True), E4M3_MAX)
    return (excess * encode_multiplier(scale)).to(torch.float8_e4m3fn), scale
