"""GEMM inputs quantized where they are produced: the fc2 input straight from its SwiGLU pre-activation.

An FP4 linear normally receives its input as a 16-bit tensor that another kernel wrote and reads it
again to quantize it. For the MLP's fc2 that input is swiglu(A) = silu(A_gate) * A_up of fc1's output
A = [A_gate | A_up] (issue 14 item 6): the fused quantizer (``kernels.quantize_rows`` with
``swiglu=True``) computes the activation in registers from A and writes only the FP4 operand and its
row scales, so the [tokens, FFN] activation is never written nor read back (per FFN element: 4 B
read + 1.5 B written instead of 4 + 2 + 2 + 1.5). Backward is megatron-core's SwiGLU backward from
the saved A, as upstream's fused SwiGLU does.

Numerics are those of the unfused path with megatron-core's compiled SwiGLU: the activation in
fp32 rounded once to A's dtype (``swiglu_reference``), quantized by the same row quantizer (bit for
bit given the activation; the activation itself within one 16-bit ulp of the reference, from the
fp32 exponential's last bits). OCC's tensor-scope bounds come from the activation at the fixed
sample positions (``occ``'s sample), computed from A at those positions only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .occ import OCCConfig, occ_bounds, occ_bounds_of_sample, occ_sample_positions
from .quantize import QuantizedTensor, QuantSpec, quantize

__all__ = ["swiglu_fusable", "swiglu_occ_bounds", "quantize_swiglu_input", "swiglu_backward", "swiglu_reference"]

ROW_SPEC = QuantSpec("fp4", "row", "e2m1")  # the operand the fused quantizer writes


def swiglu_reference(pre_activation: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the pre-activation [..., 2K] = [gate | up], in fp32 and rounded once to
    its dtype: megatron-core's SwiGLU as its compiled kernel evaluates it, and the fused
    quantizer's definition of the fc2 input."""
    gate, up = pre_activation.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(pre_activation.dtype)


def swiglu_fusable(recipe) -> bool:
    """Whether this recipe's fc2 input can be quantized inside the SwiGLU: per-row E2M1 for the
    forward and the same operand kept for wgrad (so no 16-bit copy of the activation is needed),
    OCC off, clamp-only or ``inline`` with tensor-scope bounds (a separate residual, or per-row
    quantiles, need the whole activation)."""
    occ: OCCConfig = recipe.occ
    return (
        recipe.fprop_input == ROW_SPEC
        and recipe.wgrad_input == recipe.fprop_input
        and not recipe.wgrad_along_tokens
        and not occ.residual_compensation
        and (not occ.enabled or occ.scope == "tensor")
    )


def swiglu_occ_bounds(pre_activation: torch.Tensor, config: OCCConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """OCC's clamp bounds of swiglu(A) for A [rows, 2K]: from the activation at ``occ``'s sample
    positions (computed from A there), or from the whole activation when the tensor is small
    enough for exact quantiles, exactly as ``occ_bounds`` of the materialized activation."""
    rows, width = pre_activation.shape
    k = width // 2
    positions = occ_sample_positions(rows * k, config, pre_activation.device)
    if positions is None:
        return occ_bounds(swiglu_reference(pre_activation), config)
    row, column = positions // k, positions % k
    gate, up = pre_activation[row, column], pre_activation[row, column + k]
    sample = (F.silu(gate.float()) * up.float()).to(pre_activation.dtype)
    return occ_bounds_of_sample(sample, config)


def quantize_swiglu_input(
    pre_activation: torch.Tensor, occ: OCCConfig, *, check_finite: bool, name: str, keep_activation: bool = False
) -> tuple[QuantizedTensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None]:
    """(operand of swiglu(A), OCC bounds or None, the activation if ``keep_activation``) for the
    pre-activation A [rows, 2K] on CUDA: one fused kernel (``quantize_rows`` / ``quantize_rows_inline``
    with ``swiglu=True``). ``keep_activation`` also writes the activation (telemetry)."""
    from .kernels.quantize_rows import quantize_rows, quantize_rows_inline

    rows, width = pre_activation.shape
    activation = torch.empty(rows, width // 2, dtype=pre_activation.dtype, device=pre_activation.device) if keep_activation else None
    bounds = swiglu_occ_bounds(pre_activation, occ) if occ.enabled else None
    if occ.inline:
        xq = quantize_rows_inline(pre_activation, torch.stack([bounds[0].reshape(()), bounds[1].reshape(())]), swiglu=True, activation_out=activation)
    else:
        stacked = None if bounds is None else torch.stack([bounds[0].reshape(()), bounds[1].reshape(())])
        xq = quantize_rows(pre_activation, stacked, swiglu=True, activation_out=activation)
    if check_finite and not torch.isfinite(xq.scale).all():  # a row held NaN/Inf: name it as quantize does
        quantize(swiglu_reference(pre_activation), ROW_SPEC, check_finite=True, name=name)
    return xq, bounds, activation


def swiglu_backward(grad_activation: torch.Tensor, pre_activation: torch.Tensor) -> torch.Tensor:
    """dA from d swiglu(A): megatron-core's fused SwiGLU backward (compiled) on CUDA; elsewhere its
    formula in eager PyTorch, in fp32 and rounded once as the compiled kernel does (no compiler
    needed on CPU)."""
    if grad_activation.is_cuda:
        from megatron.core.fusions.fused_bias_swiglu import swiglu_back

        return swiglu_back(grad_activation, pre_activation)
    gate, up = pre_activation.float().chunk(2, -1)
    grad = grad_activation.float()
    sigmoid = torch.sigmoid(gate)
    return torch.cat((grad * sigmoid * (1 + gate * (1 - sigmoid)) * up, grad * F.silu(gate)), -1).to(pre_activation.dtype)
