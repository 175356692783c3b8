"""The backward GEMM operands: the output gradient with the other operand's scales folded in.

dgrad multiplies dY [M, N] with Q(W) = diag(s_W) C_W (s_W: one scale per output channel, C_W:
the E2M1 elements), and wgrad multiplies dY^T with Q(X) = diag(s_X) C_X (s_X: one per token).
Those scales sit on each GEMM's *reduction* dimension, where an FP8 tensor-core GEMM cannot apply
them (it scales rows of A and columns of B only). So, before the gradient is quantized, they move
into it:

    dX = Q_g(dY · diag(s_W)) · C_W          dW = Q_g(diag(s_X) · dY)^T · C_X

Both products then hold only FP8 gradient values and exact E2M1 elements, with one tensor scale
(or one per row) outside the sum: the form `hopper` runs on FP8 tensor cores and `reference`
runs in fp32, so both backends compute the same numbers. The method is unchanged in what it
quantizes (the output gradient to FP8 E5M2, the weight and activation to the forward's FP4
values); only the tensor that the gradient's FP8 scale is taken over differs. The authors' code
re-quantizes the FP4-valued operands to E4M3 with a tensor scale instead, which rounds them a
second time; folding keeps them exact. ``FP4Recipe.fold_backward_scales=False`` restores the
unfolded definition Q_g(dY) · Q(W) (reference GEMMs only) for A/B comparison.

Folding applies when the other operand has tensor or row scales; block scales (NVFP4, MXFP4)
vary along both dimensions and are not folded.
"""

from __future__ import annotations

import torch

from .kernels import quantize_grad_fast
from .quantize import QuantizedTensor, QuantSpec, quantize

__all__ = ["can_fold", "fold_scale", "quantize_grad_output"]


def can_fold(operand: QuantizedTensor | None) -> bool:
    """Whether this saved operand's scales can move into the gradient (tensor or row scales)."""
    return (
        operand is not None
        and operand.spec.is_quantized
        and operand.scale is not None
        and operand.spec.granularity in ("tensor", "row")
    )


def fold_scale(operand: QuantizedTensor | None) -> torch.Tensor | None:
    """The operand's fp32 decode scales as a vector (one per row), or None when not folded."""
    return operand.decode_scale().reshape(-1).float() if can_fold(operand) else None


def _quantize_folded(g2d: torch.Tensor, spec: QuantSpec, column_scale, row_scale, check: bool, name: str):
    folded = g2d.float()
    if column_scale is not None:
        folded = folded * column_scale.reshape(1, -1)
    if row_scale is not None:
        folded = folded * row_scale.reshape(-1, 1)
    return quantize(folded, spec, check_finite=check, name=name)


def quantize_grad_output_reference(
    g2d: torch.Tensor,
    dgrad_spec: QuantSpec,
    wgrad_spec: QuantSpec,
    weight_scale: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    check: bool = False,
    name: str = "linear grad_output",
) -> tuple[QuantizedTensor, QuantizedTensor]:
    """(Q_g(dY · diag(s_W)) for dgrad, Q_g(diag(s_X) · dY) for wgrad); a scale None is not folded.

    The fold is one fp32 multiply per element, so any implementation that multiplies in fp32 and
    quantizes with the reference rounding gets the same bits.
    """
    if weight_scale is None and input_scale is None and dgrad_spec == wgrad_spec:
        both = quantize(g2d, dgrad_spec, check_finite=check, name=name)
        return both, both
    dgrad = _quantize_folded(g2d, dgrad_spec, weight_scale, None, check, name)
    wgrad = _quantize_folded(g2d, wgrad_spec, None, input_scale, check, name)
    return dgrad, wgrad


def quantize_grad_output(
    g2d: torch.Tensor,
    dgrad_spec: QuantSpec,
    wgrad_spec: QuantSpec,
    weight_scale: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    check: bool = False,
    name: str = "linear grad_output",
) -> tuple[QuantizedTensor, QuantizedTensor]:
    """The reference above, through the fused kernel on CUDA where it applies (same bits)."""
    fast = quantize_grad_fast(g2d, dgrad_spec, wgrad_spec, weight_scale, input_scale, check, name)
    if fast is not None:
        return fast
    return quantize_grad_output_reference(g2d, dgrad_spec, wgrad_spec, weight_scale, input_scale, check, name)
