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
from .quantize import FP8_DTYPES, QuantizedTensor, QuantSpec, encode_multiplier, quantize
from .scaling import absmax_scale

FP8_TENSOR_SPECS = tuple(QuantSpec(dtype, "tensor") for dtype in FP8_DTYPES)
# Delayed gradient scaling's per-layer state, float32: [0:2] the previous call's (dgrad, wgrad)
# maxima (the history); [2:5] the fused kernel's scratch (this call's running maxima, its
# finalisation ticket), zero between calls; [5] how many calls fell back to the current scales
# (an operand would have saturated or was not finite: dY written a second time), [6] how many
# calls there were (both since ``delayed_fallback_rate`` last reset them); [7] unused. The scratch
# lives with the history so that the kernel needs no zeroing launch and shares nothing between
# layers or streams.
GRAD_AMAX_STATE_SIZE = 8

__all__ = [
    "GRAD_AMAX_STATE_SIZE", "can_fold", "delayed_fallback_rate", "fold_scale", "new_grad_amax_state", "quantize_grad_output", "quantize_grad_output_reference",
    "quantize_grad_output_delayed_reference", "validate_grad_amax_state",
]


def new_grad_amax_state(device: torch.device | str | None = None) -> torch.Tensor:
    """A fresh delayed-scaling state (empty history: the first call takes the current scales)."""
    return torch.zeros(GRAD_AMAX_STATE_SIZE, dtype=torch.float32, device=device)


def delayed_fallback_rate(states, reset: bool = False) -> tuple[int, int]:
    """(fallbacks, calls) summed over delayed-scaling states (e.g. every FP4 layer's
    ``fp4_grad_amax``): how often the previous maximum's scale did not serve. reset: zero the
    counts after reading them (the trainer does at each log line: float32 counts are exact only
    up to 2^24 calls, fewer than a long run's)."""
    if not states:
        return 0, 0
    totals = torch.stack([state[5:7] for state in states]).double().sum(0).cpu()
    if reset:
        for state in states:
            state[5:7].zero_()
    return int(totals[0]), int(totals[1])


def validate_grad_amax_state(state: torch.Tensor, device: torch.device, who: str) -> None:
    """A clear error for a state that is not ``new_grad_amax_state``'s float32 [8] on ``device``."""
    if state.dtype != torch.float32 or state.shape != (GRAD_AMAX_STATE_SIZE,) or state.device != device or not state.is_contiguous():
        raise ValueError(
            f"{who}: amax_history must be a contiguous float32 [{GRAD_AMAX_STATE_SIZE}] tensor on {device} (megatron_fp4.backward.new_grad_amax_state), "
            f"got {state.dtype} {tuple(state.shape)} on {state.device}"
        )


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


def _fold(g2d: torch.Tensor, column_scale, row_scale) -> torch.Tensor:
    """dY in fp32 times the column scales (dgrad's s_W) and/or the row scales (wgrad's s_X)."""
    folded = g2d.float()
    if column_scale is not None:
        folded = folded * column_scale.reshape(1, -1)
    if row_scale is not None:
        folded = folded * row_scale.reshape(-1, 1)
    return folded


def _quantize_folded(g2d: torch.Tensor, spec: QuantSpec, column_scale, row_scale, check: bool, name: str):
    return quantize(_fold(g2d, column_scale, row_scale), spec, check_finite=check, name=name)


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


def _quantize_with_history(folded: torch.Tensor, spec: QuantSpec, history: torch.Tensor, margin: int) -> tuple[QuantizedTensor, torch.Tensor, torch.Tensor]:
    """FP8 `tensor` quantization of fp32 ``folded`` with the scale of the amax ``history`` (0-d)
    times 2^margin, or with its own scale where its maximum exceeds that (it would saturate) or is
    not finite; returns the operand, the next history (the maximum where finite) and whether it
    fell back to its own scale."""
    fp8 = FP8_DTYPES[spec.dtype]
    amax = folded.abs().amax()
    limit = history * 2.0**margin  # a power of two: exact (or inf, which never serves as a scale)
    current = absmax_scale(amax, torch.finfo(fp8).max)
    delayed = absmax_scale(limit, torch.finfo(fp8).max)
    use_delayed = (amax <= limit) & torch.isfinite(limit)  # NaN compares false: current
    scale = torch.where(use_delayed, delayed, current).reshape(1, 1)
    data = (folded * encode_multiplier(scale)).to(fp8)
    return QuantizedTensor(data, scale, None, spec, folded.shape, torch.float32), torch.where(torch.isfinite(amax), amax, history), ~use_delayed


def quantize_grad_output_delayed_reference(
    g2d: torch.Tensor,
    dgrad_spec: QuantSpec,
    wgrad_spec: QuantSpec,
    weight_scale: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    amax_history: torch.Tensor,
    check: bool = False,
    name: str = "linear grad_output",
    amax_margin: int = 0,
) -> tuple[QuantizedTensor, QuantizedTensor]:
    """``quantize_grad_output_reference`` with delayed scaling (``FP4Recipe.grad_amax="delayed"``):
    each FP8 `tensor` operand takes its scale from the previous call's maximum times 2^amax_margin
    (``amax_history``: ``new_grad_amax_state``'s tensor, whose [0:2] hold dgrad's and wgrad's
    maxima, updated in place, and [5] counts the calls that fell back), unless this call's
    maximum exceeds that or is not finite, where the operand takes its current scale (so nothing
    saturates and a NaN is never hidden). A fused kernel can then read dY once. The margin
    (``FP4Recipe.grad_amax_margin``) makes the fallback rare when the gradient grows a little from
    one step to the next; on an E5M2 (or E4M3) grid a larger scale than needed loses precision only
    below the format's smallest normal, one binade per unit of margin."""
    if not (dgrad_spec in FP8_TENSOR_SPECS and wgrad_spec in FP8_TENSOR_SPECS):
        raise ValueError(f"delayed gradient scaling needs FP8 tensor specs, got {dgrad_spec.describe()}, {wgrad_spec.describe()}")
    validate_grad_amax_state(amax_history, g2d.device, name)
    if check:
        quantize(g2d, dgrad_spec, check_finite=True, name=name)  # raises on NaN/Inf, naming the tensor
    dgrad, dgrad_history, dgrad_fell_back = _quantize_with_history(_fold(g2d, weight_scale, None), dgrad_spec, amax_history[0], amax_margin)
    wgrad, wgrad_history, wgrad_fell_back = _quantize_with_history(_fold(g2d, None, input_scale), wgrad_spec, amax_history[1], amax_margin)
    amax_history[:2].copy_(torch.stack([dgrad_history, wgrad_history]))
    amax_history[5] += (dgrad_fell_back | wgrad_fell_back).float()
    amax_history[6] += 1
    return dgrad, wgrad


def quantize_grad_output(
    g2d: torch.Tensor,
    dgrad_spec: QuantSpec,
    wgrad_spec: QuantSpec,
    weight_scale: torch.Tensor | None,
    input_scale: torch.Tensor | None,
    check: bool = False,
    name: str = "linear grad_output",
    amax_history: torch.Tensor | None = None,
    amax_margin: int = 0,
) -> tuple[QuantizedTensor, QuantizedTensor]:
    """The references above (delayed scaling with ``amax_history`` and ``amax_margin``), through
    the fused kernel on CUDA where it applies (same bits)."""
    fast = quantize_grad_fast(g2d, dgrad_spec, wgrad_spec, weight_scale, input_scale, check, name, amax_history, amax_margin)
    if fast is not None:
        return fast
    if amax_history is not None:
        return quantize_grad_output_delayed_reference(g2d, dgrad_spec, wgrad_spec, weight_scale, input_scale, amax_history, check, name, amax_margin)
    return quantize_grad_output_reference(g2d, dgrad_spec, wgrad_spec, weight_scale, input_scale, check, name)
