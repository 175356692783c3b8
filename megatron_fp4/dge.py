"""Differentiable Gradient Estimator (DGE) for weight quantization (paper §3.1, Eq. 5-7).

The straight-through estimator passes dQ/dW = 1. DGE instead models the quantizer, inside each
interval [g_i, g_{i+1}] of the (non-uniform) FP4 grid, by the smooth function

    f(u) = δ/2 · (1 + sign(2u/δ - 1) · |2u/δ - 1|^(1/k)),    u = x - g_i,  δ = g_{i+1} - g_i

which runs from g_i to g_{i+1} like a soft step centred on the midpoint, and uses its derivative

    f'(u) = (1/k) · |2u/δ - 1|^(1/k - 1)

to scale the weight gradient elementwise: dL/dW = dL/dW_q ⊙ f'(W / s), evaluated on the scaled
weight. f' is infinite at the midpoint, so it is clamped to a maximum (3.0 in the paper's
implementation, k = 5 in the paper). The model is odd-symmetric: negative values use |x|.
f' depends only on W, so the correction is linear in the gradient and may be applied once to an
accumulated (and data-parallel-reduced) gradient with the identical result.
"""

from __future__ import annotations

import torch

from .formats import E2M1, FP4Format

__all__ = ["DEFAULT_K", "DEFAULT_MAX_DERIVATIVE", "dge_interval", "dge_smooth", "dge_derivative", "dge_scale_weight_grad"]

DEFAULT_K = 5.0
DEFAULT_MAX_DERIVATIVE = 3.0


def _working_precision(x: torch.Tensor) -> torch.Tensor:
    """fp64 stays fp64 (tests); everything else is computed in fp32."""
    return x if x.dtype == torch.float64 else x.float()


def dge_interval(x_scaled: torch.Tensor, fmt: FP4Format = E2M1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each |x| (clamped to the grid's range): (lower grid point, interval width δ, u = |x| - lower).

    A value exactly on a grid point belongs to the interval above it (the top point to the last).
    """
    x = _working_precision(x_scaled)
    grid = fmt.grid(x.device).to(x.dtype)
    magnitude = x.abs().clamp_max(fmt.max_value)
    index = (torch.bucketize(magnitude, grid, right=True) - 1).clamp(0, len(grid) - 2)
    lower = grid[index]
    width = grid[index + 1] - lower
    return lower, width, magnitude - lower


def dge_smooth(x_scaled: torch.Tensor, fmt: FP4Format = E2M1, k: float = DEFAULT_K) -> torch.Tensor:
    """The smooth stand-in f for the quantizer, in the scaled domain (odd in x)."""
    lower, width, u = dge_interval(x_scaled, fmt)
    t = 2 * u / width - 1
    value = lower + width / 2 * (1 + torch.sign(t) * t.abs() ** (1 / k))
    return value.copysign(_working_precision(x_scaled))


def dge_derivative(
    x_scaled: torch.Tensor,
    fmt: FP4Format = E2M1,
    k: float = DEFAULT_K,
    max_derivative: float = DEFAULT_MAX_DERIVATIVE,
) -> torch.Tensor:
    """f'(x) clamped to ``max_derivative``: the factor DGE applies to the weight gradient (fp32)."""
    _, width, u = dge_interval(x_scaled, fmt)
    distance = (2 * u / width - 1).abs()
    derivative = (1 / k) * distance.pow(1 / k - 1)  # inf at the midpoint (distance 0)
    return derivative.clamp_max(max_derivative)


def dge_scale_weight_grad(
    grad_w: torch.Tensor,
    weight: torch.Tensor,
    scale: torch.Tensor,
    fmt: FP4Format = E2M1,
    k: float = DEFAULT_K,
    max_derivative: float = DEFAULT_MAX_DERIVATIVE,
) -> torch.Tensor:
    """grad_w ⊙ f'(W / s_W) in fp32: DGE applied to a weight gradient (the fused kernel's reference)."""
    return grad_w * dge_derivative(weight.float() / scale, fmt, k, max_derivative)
