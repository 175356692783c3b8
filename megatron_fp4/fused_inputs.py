"""GEMM inputs quantized where they are produced: fc2's from its SwiGLU pre-activation, QKV's and fc1's from the RMSNorm.

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

The inputs of the QKV and fc1 linears are RMSNorm(x) of the residual stream x. The fused form
(for OCC's inline operand, where it measured faster: ``rms_norm_fusable``;
``quantize_rms_norm_input``) takes each row's 1/rms in a statistics pass (``rms_rstd``: reads x
once, writes one float per token) and then quantizes (x * rstd) * weight, rounded once to x's
dtype, in the quantizer's own pass: the normalized activation is never written nor read back (per
element 2 + 2 B read + 1 B written instead of 2 + 2 written + 2 read + 1). Given the rstd the
operand equals the reference quantizer's of ``rms_norm_reference`` bit for bit (no reduction in
that pass); the rstd itself equals ``rms_rstd_reference`` up to the fp32 sum's order, and
torch's own RMSNorm up to its approximate reciprocal square root. OCC's tensor-scope bounds
come from the normalized activation at the sample positions, with the same rstd. Backward is
torch's fused RMSNorm backward from the saved x and rstd (its formula off CUDA).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .occ import (
    OCCConfig, occ_bounds, occ_bounds_of_sample, occ_norm_bounds_on_device, occ_sample_positions, stacked_bounds,
)
from .quantize import QuantizedTensor, QuantSpec, quantize

__all__ = [
    "swiglu_fusable", "swiglu_occ_bounds", "quantize_swiglu_input", "swiglu_backward", "swiglu_reference",
    "rms_norm_fusable", "rms_norm_occ_bounds", "quantize_rms_norm_input", "rms_norm_backward", "rms_norm_reference", "rms_rstd_reference",
]

ROW_SPEC = QuantSpec("fp4", "row", "e2m1")  # the operand the fused quantizer writes


def swiglu_reference(pre_activation: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up of the pre-activation [..., 2K] = [gate | up], in fp32 and rounded once to
    its dtype: megatron-core's SwiGLU as its compiled kernel evaluates it, and the fused
    quantizer's definition of the fc2 input."""
    gate, up = pre_activation.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(pre_activation.dtype)


def swiglu_fusable(recipe) -> bool:
    """Whether this recipe's fc2 input can be quantized inside the SwiGLU (``fused_operand_possible``)."""
    return fused_operand_possible(recipe)


def fused_operand_possible(recipe) -> bool:
    """Whether this recipe's input operand can be made inside the kernel that produces the input:
    per-row E2M1 for the forward and the same operand kept for wgrad (so no 16-bit copy of the
    activation is needed), OCC off, clamp-only or ``inline`` with tensor-scope bounds (a separate
    residual, or per-row quantiles, need the whole activation)."""
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
        xq = quantize_rows_inline(pre_activation, stacked_bounds(bounds), swiglu=True, activation_out=activation)
    else:
        stacked = None if bounds is None else stacked_bounds(bounds)
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


def rms_rstd_reference(x2d: torch.Tensor, eps: float) -> torch.Tensor:
    """1 / sqrt(mean(x^2) + eps) per row, float32 [rows]: the fused RMSNorm's statistics."""
    return 1.0 / torch.sqrt(x2d.float().square().mean(dim=-1) + eps)


def rms_norm_reference(x2d: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> torch.Tensor:
    """RMSNorm(x) with the given 1/rms per row: (x * rstd) * weight in fp32, rounded once to x's
    dtype (torch's RMSNorm in the same order), the fused quantizer's definition of its input."""
    return (x2d.float() * rstd[:, None] * weight.float()).to(x2d.dtype)


def rms_norm_fusable(recipe, hidden: int) -> bool:
    """Whether a linear with this recipe takes RMSNorm(x) from x: OCC's ``inline`` operand
    (``paper``'s default; ``fused_operand_possible``) on rows the quantizer holds whole. Only
    there it measured faster (H200, benchmarks/NOTES.md session 11: 1.17-1.32x at 4096 / 5120
    against torch's RMSNorm then the inline quantizer); for the plain row operand (``direct``,
    clamp-only OCC) the statistics pass's extra read and the norm variant's heavier instruction
    count made it 0.74-0.79x of torch's norm then our row quantizer, so those keep upstream's
    norm (the kernels still take ``norm_weight`` there)."""
    from .kernels.quantize_rows import MAX_WHOLE_ROW

    return fused_operand_possible(recipe) and recipe.occ.inline and hidden <= MAX_WHOLE_ROW


def rms_norm_occ_bounds(x2d: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor, config: OCCConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """OCC's clamp bounds of RMSNorm(x) for x [rows, K] and its rstd: from the normalized activation
    at ``occ``'s sample positions (computed from x there), or from the whole activation when the
    tensor is small enough for exact quantiles, exactly as ``occ_bounds`` of the materialized one."""
    rows, k = x2d.shape
    positions = occ_sample_positions(rows * k, config, x2d.device)
    device = occ_norm_bounds_on_device(x2d, weight, rstd, positions, config)  # CUDA: gathered, normalized and ranked in two launches
    if device is not None:
        return device
    if positions is None:
        return occ_bounds(rms_norm_reference(x2d, weight, rstd), config)
    row, column = positions // k, positions % k
    sample = (x2d[row, column].float() * rstd[row] * weight[column].float()).to(x2d.dtype)
    return occ_bounds_of_sample(sample, config)


def quantize_rms_norm_input(
    x2d: torch.Tensor, weight: torch.Tensor, eps: float, occ: OCCConfig, *, check_finite: bool, name: str, keep_activation: bool = False
) -> tuple[QuantizedTensor, tuple[torch.Tensor, torch.Tensor] | None, torch.Tensor | None, torch.Tensor]:
    """(operand of RMSNorm(x), OCC bounds or None, the activation if ``keep_activation``, rstd
    [rows] float32) for x [rows, K] on CUDA: the statistics pass, then one fused quantizer pass
    (``quantize_rows`` / ``quantize_rows_inline`` with the norm)."""
    from .kernels.quantize_rows import quantize_rows, quantize_rows_inline, rms_rstd

    rstd = rms_rstd(x2d, eps)
    activation = torch.empty_like(x2d) if keep_activation else None
    bounds = rms_norm_occ_bounds(x2d, weight, rstd, occ) if occ.enabled else None
    stacked = None if bounds is None else stacked_bounds(bounds)
    norm = {"norm_weight": weight, "norm_rstd": rstd, "activation_out": activation}
    xq = quantize_rows_inline(x2d, stacked, **norm) if occ.inline else quantize_rows(x2d, stacked, **norm)
    if check_finite and not torch.isfinite(xq.scale).all():  # a row held NaN/Inf: name it as quantize does
        quantize(rms_norm_reference(x2d, weight, rstd), ROW_SPEC, check_finite=True, name=name)
    return xq, bounds, activation, rstd


def rms_norm_backward(grad_output: torch.Tensor, x2d: torch.Tensor, weight: torch.Tensor, rstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dweight) of RMSNorm from the saved x and rstd: torch's fused RMSNorm backward on CUDA
    (what its own RMSNorm runs); elsewhere the formula in fp32, dx = rstd (g - x^ mean(g x^)) with
    x^ = x rstd and g = dy weight, dweight = sum over rows of dy x^."""
    if grad_output.is_cuda and hasattr(torch.ops.aten, "_fused_rms_norm_backward"):
        return torch.ops.aten._fused_rms_norm_backward(grad_output.contiguous(), x2d, [x2d.shape[-1]], rstd[:, None], weight, [True, True])
    normalized = x2d.float() * rstd[:, None]
    g = grad_output.float() * weight.float()
    dx = rstd[:, None] * (g - normalized * (g * normalized).mean(dim=-1, keepdim=True))
    return dx.to(x2d.dtype), (grad_output.float() * normalized).sum(dim=0).to(weight.dtype)
