"""DGE applied to the weight gradient in one pass (paper §3.1), reference beside it.

grad_w [N, K] (fp32, from the wgrad GEMM) is multiplied in place by f'(W / s_W), the clamped
derivative of DGE's smooth quantizer model on the E2M1 grid, with s_W the forward's per-output-
channel scales: one read of the weight and one read-modify-write of the gradient, instead of
the reference's chain of elementwise tensors. Reference: ``dge_scale_grad_reference`` (=
``grad_w * megatron_fp4.dge.dge_derivative(W / s_W)``). Same operations in the same order except
``d^e``, computed as ``exp2(e·log2 d)`` (what Triton offers on GPU and in its interpreter alike):
unclamped factors have d > 0.03, so |e·log2 d| < 4 and the result is within 16 ulp of torch's
``pow``; the test holds it to that. The gradient itself is FP8 upstream, so this is far below
anything that matters.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..dge import dge_scale_weight_grad
from .fp8_rounding import round_to_bf16

__all__ = ["dge_scale_grad", "dge_scale_grad_reference"]

BLOCK = 1024


@triton.jit
def _dge_scale_grad_kernel(grad_ptr, weight_ptr, scale_ptr, out_ptr, K, exponent, inverse_k, max_derivative, OUT_BF16: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < K
    weight = tl.load(weight_ptr + row * K + cols, mask=mask, other=0.0).to(tl.float32)
    # propagate_nan: a NaN weight (or scale) gives a NaN factor, as the reference
    magnitude = tl.minimum(tl.abs(tl.math.div_rn(weight, tl.load(scale_ptr + row))), 6.0, propagate_nan=tl.PropagateNan.ALL)
    # interval of the E2M1 grid 0, .5, 1, 1.5, 2, 3, 4, 6 holding |x| (a grid point opens the one above)
    lower = tl.where(magnitude < 2.0, tl.floor(magnitude * 2.0) * 0.5, tl.where(magnitude < 4.0, tl.floor(magnitude), 4.0))
    width = tl.where(magnitude < 2.0, 0.5, tl.where(magnitude < 4.0, 1.0, 2.0))
    distance = tl.abs(2.0 * (magnitude - lower) / width - 1.0)
    derivative = tl.minimum(inverse_k * tl.exp2(exponent * tl.log2(distance)), max_derivative, propagate_nan=tl.PropagateNan.ALL)
    grad = tl.load(grad_ptr + row * K + cols, mask=mask)
    result = grad * derivative
    if OUT_BF16:
        result = round_to_bf16(result)
    tl.store(out_ptr + row * K + cols, result.to(out_ptr.dtype.element_ty), mask=mask)


def dge_scale_grad(
    grad_w: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, k: float, max_derivative: float, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """grad_w ⊙ f'(weight / scale) (grad_w fp32 [N, K], scale [N, 1]): in place, or written once in
    ``out_dtype`` (e.g. the weight's bf16) when that differs from fp32."""
    if grad_w.dtype != torch.float32 or not grad_w.is_contiguous():
        raise ValueError(f"dge_scale_grad: grad_w must be contiguous fp32, got {grad_w.dtype} strides {grad_w.stride()}")
    n, k_dim = weight.shape
    weight = weight.contiguous()
    scale = scale.float().contiguous()
    if out_dtype not in (None, torch.float32, torch.bfloat16):
        return dge_scale_grad(grad_w, weight, scale, k, max_derivative).to(out_dtype)
    out = grad_w if out_dtype in (None, torch.float32) else torch.empty_like(grad_w, dtype=out_dtype)
    grid = (n, triton.cdiv(k_dim, BLOCK))
    _dge_scale_grad_kernel[grid](
        grad_w, weight, scale, out, k_dim, 1 / k - 1, 1 / k, max_derivative, OUT_BF16=out.dtype == torch.bfloat16, BLOCK=BLOCK
    )
    return out


def dge_scale_grad_reference(grad_w: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, k: float, max_derivative: float) -> torch.Tensor:
    return dge_scale_weight_grad(grad_w, weight, scale, k=k, max_derivative=max_derivative)
