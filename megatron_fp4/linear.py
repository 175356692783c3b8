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

from . import health
from .dge import dge_derivative
from .gemm import GemmBackend, get_backend
from .occ import SparseResidual, occ_clamp
from .kernels import quantize_fast
from .quantize import QuantizedTensor, check_finite_enabled, quantize
from .recipe import FP4Recipe

__all__ = ["FP4GemmState", "FP4LinearFunction", "fp4_linear", "FP4Linear"]


def _quantize_pair(tensor: torch.Tensor, first_spec, second_spec, check: bool, name: str):
    """Quantize once when both uses share a spec; otherwise once per spec."""
    first = quantize_fast(tensor, first_spec, check_finite=check, name=name)
    second = first if second_spec == first_spec else quantize_fast(tensor, second_spec, check_finite=check, name=name)
    return first, second


class FP4GemmState:
    """The FP4 GEMMs of one linear layer: forward, and what it keeps for the backward GEMMs.

    Shared by the plain autograd function here and the tensor-parallel one in
    ``megatron_fp4.megatron.layers``, which wraps the same GEMMs in Megatron's communication.
    """

    def __init__(self, recipe: FP4Recipe, backend: GemmBackend, name: str = "linear") -> None:
        self.recipe, self.backend, self.name = recipe, backend, name
        self.check = recipe.check_finite or check_finite_enabled()
        self.x_saved: QuantizedTensor | None = None
        self.w_saved: QuantizedTensor | None = None
        self.w_fprop: QuantizedTensor | None = None  # the forward's weight scales, for DGE
        self.residual: SparseResidual | None = None

    def forward(self, x2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """fp32 ``Q(clamp X) Q(W)^T + ΔX W^T`` for x2d [M, K], weight [N, K]; keeps the saved forms."""
        recipe = self.recipe
        if x2d.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"FP4 linear: input shape {tuple(x2d.shape)} does not match weight shape {tuple(weight.shape)}"
            )
        residual: SparseResidual | None = None
        x_main = x2d
        if recipe.occ.enabled:
            clamped = occ_clamp(x2d, recipe.occ)
            x_main = clamped.clamped
            if recipe.occ.compensate:
                residual = clamped.residual

        xq = quantize_fast(x_main, recipe.fprop_input, check_finite=self.check, name="linear input")
        if health.is_collecting():
            reconstruction = xq.dequantize_2d() + (residual.to_dense() if residual is not None else 0)
            health.record_input(self.name, x2d, reconstruction, clamped.residual.nnz if recipe.occ.enabled else 0)
        wq, self.w_saved = _quantize_pair(weight, recipe.fprop_weight, recipe.dgrad_weight, self.check, "linear weight")
        y = self.backend.fprop(xq, wq)
        if residual is not None:
            y = y + residual.matmul_weight_t(weight)

        if recipe.wgrad_input == recipe.fprop_input:
            self.x_saved = xq
        elif recipe.wgrad_input.is_quantized:
            self.x_saved = quantize_fast(x_main, recipe.wgrad_input, check_finite=self.check, name="linear input")
        else:  # high-precision wgrad input: the true input, outliers included
            self.x_saved, residual = quantize(x2d, recipe.wgrad_input), None
        self.residual = residual
        self.w_fprop = wq if recipe.dge.enabled else None
        return y

    def quantize_grad_output(self, g2d: torch.Tensor) -> tuple[QuantizedTensor, QuantizedTensor]:
        """The output gradient in the dgrad and wgrad formats (quantized once when they agree)."""
        recipe = self.recipe
        return _quantize_pair(g2d, recipe.dgrad_grad_output, recipe.wgrad_grad_output, self.check, "linear grad_output")

    def grad_input(self, gq_dgrad: QuantizedTensor) -> torch.Tensor:
        """fp32 dX = Q_g(dY) Q(W) (the clamp is straight-through)."""
        return self.backend.dgrad(gq_dgrad, self.w_saved)

    def grad_weight(self, gq_wgrad: QuantizedTensor, weight: torch.Tensor) -> torch.Tensor:
        """fp32 dW = (Q_g(dY)^T Q(clamp X)) ⊙ f'(W / s_W) + Q_g(dY)^T ΔX."""
        grad_w = self.backend.wgrad(gq_wgrad, self.x_saved)
        if self.w_fprop is not None:
            grad_w = grad_w * weight_dge_factor(weight, self.w_fprop, self.recipe)
        if self.residual is not None:
            grad_w = grad_w + self.residual.t_matmul(gq_wgrad.dequantize_2d())
        return grad_w

    def release(self) -> None:
        """Drop the saved operands once backward is done."""
        self.x_saved = self.w_saved = self.w_fprop = self.residual = None


class FP4LinearFunction(torch.autograd.Function):
    """``y = x @ W^T + b`` with the recipe's quantized GEMMs (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, recipe: FP4Recipe, backend: GemmBackend):
        state = FP4GemmState(recipe, backend)
        y = state.forward(x.reshape(-1, x.shape[-1]), weight)
        if bias is not None:
            y = y + bias.float()
        ctx.state = state
        ctx.has_bias, ctx.x_shape, ctx.x_dtype = bias is not None, x.shape, x.dtype
        ctx.save_for_backward(weight)
        return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        (weight,) = ctx.saved_tensors
        state: FP4GemmState = ctx.state
        g2d = grad_output.reshape(-1, weight.shape[0])
        gq_dgrad, gq_wgrad = state.quantize_grad_output(g2d)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = state.grad_input(gq_dgrad).to(ctx.x_dtype).reshape(ctx.x_shape)
        if ctx.needs_input_grad[1]:
            grad_w = state.grad_weight(gq_wgrad, weight).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2d.float().sum(0).to(grad_output.dtype)
        state.release()
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
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None, recipe, backend, device="meta")
        layer.weight, layer.bias = linear.weight, linear.bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fp4_linear(x, self.weight, self.bias, self.recipe, self.backend)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, recipe={self.recipe.name}"
