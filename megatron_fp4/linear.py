"""The FP4 linear layer: autograd ties recipe, quantizers, DGE, OCC and a GEMM backend together.

Forward (paper §3):   Y = Q(clamp(X)) Q(W)^T + ΔX W^T + b      (ΔX: sparse OCC residual)
Backward:             dX = Q_g(dY) Q(W)                          (clamp is straight-through)
                      dW = (Q_g(dY)^T Q(clamp(X))) ⊙ f'(W / s_W) + Q_g(dY)^T ΔX
                      db = Σ dY
with Q the recipe's operand formats, Q_g the output-gradient format (FP8 E5M2 in `paper`) and
f' the DGE derivative (all ones when DGE is off: straight-through). The compensation term is the
exact derivative of the forward's ΔX W^T, so DGE scales only the quantized path.

Saved for backward: the quantized operands (packed FP4 codes + scales), the sparse residual and
the weight parameter itself (a reference, not a copy), never a full-precision activation copy
unless the recipe asks for a high-precision wgrad input.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .dge import dge_derivative
from .gemm import GemmBackend, get_backend
from .occ import SparseResidual, occ_clamp
from .quantize import QuantizedTensor, check_finite_enabled, quantize
from .recipe import FP4Recipe

__all__ = ["FP4LinearFunction", "fp4_linear", "FP4Linear"]


def _quantize_pair(tensor: torch.Tensor, first_spec, second_spec, check: bool, name: str):
    """Quantize once when both uses share a spec; otherwise once per spec."""
    first = quantize(tensor, first_spec, check_finite=check, name=name)
    second = first if second_spec == first_spec else quantize(tensor, second_spec, check_finite=check, name=name)
    return first, second


class FP4LinearFunction(torch.autograd.Function):
    """``y = x @ W^T + b`` with the recipe's quantized GEMMs (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, recipe: FP4Recipe, backend: GemmBackend):
        check = recipe.check_finite or check_finite_enabled()
        in_features = weight.shape[1]
        if x.shape[-1] != in_features:
            raise ValueError(f"FP4 linear: input shape {tuple(x.shape)} does not match weight shape {tuple(weight.shape)}")
        x2d = x.reshape(-1, in_features)
        residual: SparseResidual | None = None
        x_main = x2d
        if recipe.occ.enabled:
            clamped = occ_clamp(x2d, recipe.occ)
            x_main = clamped.clamped
            if recipe.occ.compensate:
                residual = clamped.residual

        xq = quantize(x_main, recipe.fprop_input, check_finite=check, name="linear input")
        wq, w_saved = _quantize_pair(weight, recipe.fprop_weight, recipe.dgrad_weight, check, "linear weight")
        y = backend.fprop(xq, wq)
        if residual is not None:
            y = y + residual.matmul_weight_t(weight)
        if bias is not None:
            y = y + bias.float()

        if recipe.wgrad_input == recipe.fprop_input:
            x_saved = xq
        elif recipe.wgrad_input.is_quantized:
            x_saved = quantize(x_main, recipe.wgrad_input, check_finite=check, name="linear input")
        else:  # high-precision wgrad input: the true input, outliers included
            x_saved, residual = quantize(x2d, recipe.wgrad_input), None
        ctx.recipe, ctx.backend = recipe, backend
        ctx.x_saved, ctx.w_saved, ctx.residual = x_saved, w_saved, residual
        ctx.w_fprop = wq if recipe.dge.enabled else None
        ctx.has_bias, ctx.x_shape, ctx.x_dtype = bias is not None, x.shape, x.dtype
        ctx.save_for_backward(weight)
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        recipe, backend = ctx.recipe, ctx.backend
        check = recipe.check_finite or check_finite_enabled()
        g2d = grad_output.reshape(-1, weight.shape[0])
        gq_dgrad, gq_wgrad = _quantize_pair(
            g2d, recipe.dgrad_grad_output, recipe.wgrad_grad_output, check, "linear grad_output"
        )
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = backend.dgrad(gq_dgrad, ctx.w_saved).to(ctx.x_dtype).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = backend.wgrad(gq_wgrad, ctx.x_saved)
            if ctx.w_fprop is not None:
                grad_w = grad_w * weight_dge_factor(weight, ctx.w_fprop, recipe)
            if ctx.residual is not None:
                grad_w = grad_w + ctx.residual.t_matmul(gq_wgrad.dequantize_2d())
            grad_w = grad_w.to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2d.float().sum(0).to(grad_output.dtype)
        ctx.x_saved = ctx.w_saved = ctx.residual = ctx.w_fprop = None
        return grad_x, grad_w, grad_b, None, None


def weight_dge_factor(weight: torch.Tensor, quantized_weight: QuantizedTensor, recipe: FP4Recipe) -> torch.Tensor:
    """f'(W / s_W): DGE's elementwise weight-gradient factor on the forward's weight scaling."""
    scaled = weight.float() / quantized_weight.decode_scale()
    return dge_derivative(scaled, recipe.fprop_weight.format, recipe.dge.k, recipe.dge.max_derivative)


def fp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    recipe: FP4Recipe | None = None,
    backend: GemmBackend | str | None = None,
) -> torch.Tensor:
    """Functional FP4 linear. ``recipe`` defaults to `paper`; a recipe that quantizes nothing
    (`bf16`) runs ``F.linear`` itself, so it is nn.Linear exactly."""
    recipe = recipe or FP4Recipe.paper()
    if not recipe.quantizes:
        return F.linear(x, weight, bias)
    if not isinstance(backend, GemmBackend):
        backend = get_backend(backend)
    return FP4LinearFunction.apply(x, weight, bias, recipe, backend)


class FP4Linear(nn.Module):
    """Drop-in ``nn.Linear`` whose GEMMs follow an ``FP4Recipe`` (same parameters, same init)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        recipe: FP4Recipe | None = None,
        backend: str | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.recipe = recipe or FP4Recipe.paper()
        self.backend = backend
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation, so swapping layers keeps a model's statistics."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features) if self.in_features > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: FP4Recipe | None = None, backend: str | None = None) -> "FP4Linear":
        """Wrap an existing nn.Linear's parameters (shared, not copied)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.recipe, layer.backend = recipe or FP4Recipe.paper(), backend
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp4_linear(x, self.weight, self.bias, self.recipe, self.backend)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, recipe={self.recipe.name}"
