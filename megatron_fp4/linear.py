"""The FP4 linear layer: autograd ties recipe, quantizers, DGE, OCC and a GEMM backend together.

Forward (paper §3):   Y = Q(clamp(X)) Q(W)^T + ΔX W^T + b      (ΔX: sparse OCC residual)
Backward:             dX = Q_g(dY diag(s_W)) C_W                 (clamp is straight-through)
                      dW = (Q_g(diag(s_X) dY)^T C_X) ⊙ f'(W / s_W) + dY^T ΔX
                      db = Σ dY
with Q the recipe's operand formats, Q(W) = diag(s_W) C_W and Q(X) = diag(s_X) C_X their row
scales and E2M1 elements, Q_g the output-gradient format (FP8 E5M2 in `paper`) and f' the DGE
derivative (all ones when DGE is off: straight-through). The row scales sit on the backward
GEMMs' reduction dimension, so they are folded into dY before Q_g (``megatron_fp4.backward``;
``fold_backward_scales=False`` gives Q_g(dY) Q(W) instead). The compensation term is the exact
derivative of the forward's ΔX W^T, taken with the unquantized dY (the paper's high-precision
residual GEMM), so DGE scales only the quantized path.

Saved for backward: the quantized operands (packed FP4 codes + scales), the sparse residual and
the weight parameter itself (a reference, not a copy), never a full-precision activation copy
unless the recipe asks for a high-precision wgrad input.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from . import health, weight_cache
from .backward import fold_scale, new_grad_amax_state, quantize_grad_output
from .dge import dge_derivative
from .gemm import GemmBackend, get_backend
from .fused_inputs import (
    quantize_rms_norm_input, quantize_swiglu_input, rms_norm_fusable, rms_norm_reference, rms_rstd_reference, swiglu_fusable, swiglu_reference,
)
from .kernels import dge_scale_grad_fast, quantize_along_tokens_fast, quantize_fast, shared_nvfp4_tensor_scales, triton_available
from .occ import FP8Residual, HotChannelResidual, SparseResidual, fp8_rows, occ_bounds, occ_compensation_residual, quantize_with_inline_outliers
from .quantize import QuantizedTensor, QuantSpec, check_finite_enabled, quantize
from .recipe import FP4Recipe

__all__ = ["FP4GemmState", "FP4LinearFunction", "fp4_linear", "FP4Linear"]

# the operands a block GEMM consumes at once (X in fprop unless kept, dY, dY^T) written as their BF16
# values alone, without packed codes, where the backend takes BF16 operands (NOTES.md, session 17)
BF16_OPERANDS_ALONE = True


def _quantize_pair(tensor: torch.Tensor, first_spec, second_spec, check: bool, name: str, bf16_values: bool = False):
    """Quantize once when both uses share a spec; otherwise once per spec. bf16_values: the first
    (the forward's operand) also in BF16 where the GEMM wants it (``QuantizedTensor.bf16``)."""
    first = quantize_fast(tensor, first_spec, check_finite=check, name=name, bf16_values=bf16_values)
    second = first if second_spec == first_spec else quantize_fast(tensor, second_spec, check_finite=check, name=name)
    return first, second


def _dge_scale(weight: torch.Tensor, wq: QuantizedTensor, recipe: FP4Recipe) -> torch.Tensor:
    """The weight's decode scale DGE evaluates f'(W / s) with: the forward's FP4 scale, or for a
    high-precision weight (`bf16_dge`) the per-channel FP4 scale amax / 6 it would have had."""
    if recipe.fprop_weight.dtype == "fp4":
        return wq.decode_scale()
    from .scaling import absmax_scale

    return absmax_scale(weight.detach().float().abs().amax(dim=-1, keepdim=True), recipe.fprop_weight.format.max_value)


class FP4GemmState:
    """The FP4 GEMMs of one linear layer: forward, and what it keeps for the backward GEMMs.

    Shared by the plain autograd function here and the tensor-parallel one in
    ``megatron_fp4.megatron.layers``, which wraps the same GEMMs in Megatron's communication.
    """

    def __init__(self, recipe: FP4Recipe, backend: GemmBackend, name: str = "linear", grad_amax_history: torch.Tensor | None = None) -> None:
        """grad_amax_history: the layer's output-gradient maxima (``backward.new_grad_amax_state``) for
        ``recipe.grad_amax == "delayed"`` (updated in place by each backward)."""
        if recipe.grad_amax == "delayed" and grad_amax_history is None:
            raise ValueError(f"{name}: --fp4-grad-amax delayed needs the layer's amax history (FP4 layers keep one)")
        self.recipe, self.backend, self.name = recipe, backend, name
        self.grad_amax_history = grad_amax_history if recipe.grad_amax == "delayed" else None
        self.check = recipe.check_finite or check_finite_enabled()
        self.bf16_operands = getattr(backend, "block_operands_as_bf16", False)  # quantizers write the operands consumed at once in BF16 too
        self.x_saved: QuantizedTensor | None = None
        self.w_saved: QuantizedTensor | None = None
        self.w_fprop_scale: torch.Tensor | None = None  # the forward's weight scales, for DGE
        self.residual: SparseResidual | HotChannelResidual | FP8Residual | None = None
        self.folded = (False, False)  # whether dgrad's weight / wgrad's input scales moved into dY
        self.norm_rstd: torch.Tensor | None = None  # with a fused RMSNorm: 1/rms per row, for its backward
        self.grad_tokens_scale: torch.Tensor | None = None  # dY^T's NVFP4 tensor scale, found with dY's (backward)

    def forward(
        self, x2d: torch.Tensor, weight: torch.Tensor, out_dtype: torch.dtype = torch.float32, swiglu: bool = False,
        norm: tuple[torch.Tensor, float] | None = None,
    ) -> torch.Tensor:
        """``Q(clamp X) Q(W)^T + ΔX W^T`` (accumulated in fp32, returned in ``out_dtype``) for x2d
        [M, K], weight [N, K]; keeps the saved forms. swiglu: x2d is the pre-activation [M, 2K]
        and X = swiglu(x2d); norm = (RMSNorm weight [K], eps): X = RMSNorm(x2d), its 1/rms per row
        kept in ``norm_rstd``; either quantized where it is computed (``megatron_fp4.fused_inputs``)."""
        recipe = self.recipe
        fusing = x2d.is_cuda and triton_available()
        if swiglu and not (fusing and swiglu_fusable(recipe)):
            x2d, swiglu = swiglu_reference(x2d), False  # the same activation, written out
        fused_norm = norm is not None and fusing and rms_norm_fusable(recipe, x2d.shape[-1])
        if norm is not None and not fused_norm:  # the same activation, written out
            self.norm_rstd = rms_rstd_reference(x2d, norm[1])
            x2d = rms_norm_reference(x2d, norm[0], self.norm_rstd)
        k = x2d.shape[-1] // 2 if swiglu else x2d.shape[-1]
        if k != weight.shape[1]:
            raise ValueError(
                f"FP4 linear: input shape {tuple(x2d.shape)}{' (SwiGLU pre-activation)' if swiglu else ''} does not match weight shape {tuple(weight.shape)}"
            )
        residual: SparseResidual | HotChannelResidual | FP8Residual | None = None
        bounds = None
        input_tokens_scale = None  # X^T's NVFP4 tensor scale, found with X's (``shared_nvfp4_tensor_scales``)
        if swiglu:
            xq, bounds, x2d = quantize_swiglu_input(
                x2d, recipe.occ, check_finite=self.check, name=f"{self.name} input", keep_activation=health.is_collecting()
            )
        elif fused_norm:
            xq, bounds, x2d, self.norm_rstd = quantize_rms_norm_input(
                x2d, norm[0], norm[1], recipe.occ, check_finite=self.check, name=f"{self.name} input", keep_activation=health.is_collecting()
            )
        else:
            if recipe.occ.enabled:
                bounds = occ_bounds(x2d, recipe.occ)
                if recipe.occ.residual_compensation:
                    residual = occ_compensation_residual(x2d, *bounds, recipe.occ)
            if recipe.occ.inline:  # the clamped entries as E4M3 inside the operand (fprop and wgrad)
                xq = quantize_with_inline_outliers(x2d, *bounds, check_finite=self.check, name=f"{self.name} input")
            else:
                input_scale = None
                if recipe.wgrad_along_tokens and bounds is None:  # X in 1x16 blocks, X^T after the RHT: both scales from one read
                    input_scale, input_tokens_scale = shared_nvfp4_tensor_scales(
                        x2d, recipe.fprop_input, recipe.wgrad_input, recipe.hadamard_seed, recipe.wgrad_hadamard, self.check
                    )
                # X's codes only where backward keeps this operand (wgrad in the same format); else its BF16 values alone
                kept = not recipe.wgrad_along_tokens and recipe.wgrad_input == recipe.fprop_input
                xq = quantize_fast(
                    x2d, recipe.fprop_input, check_finite=self.check, name=f"{self.name} input", clamp=bounds, bf16_values=self.bf16_operands,
                    tensor_scale=input_scale, codes=kept or not BF16_OPERANDS_ALONE,
                )
        if health.is_collecting() and recipe.fprop_input.is_quantized:  # `bf16_dge`: nothing to measure in the input
            compensation = residual.to_dense() if residual is not None else 0
            clamped = int(((x2d > bounds[1]) | (x2d < bounds[0])).sum()) if bounds is not None else 0
            health.record_input(self.name, x2d, xq.dequantize_2d() + compensation, clamped)
        wq, self.w_saved = weight_cache.cached(
            weight, (recipe.fprop_weight, recipe.dgrad_weight, self.check),
            lambda: _quantize_pair(weight, recipe.fprop_weight, recipe.dgrad_weight, self.check, f"{self.name} weight", self.bf16_operands),
        )
        if isinstance(residual, HotChannelResidual):  # added in the output's dtype by an addmm epilogue
            y = residual.add_matmul_weight_t_to(self.backend.fprop(xq, wq, out_dtype), weight)
        elif isinstance(residual, FP8Residual):  # one FP8 GEMM against W's E4M3 form, added in place
            weight_fp8 = weight_cache.cached(weight, ("fp8_rows", self.check), lambda: fp8_rows(weight.detach()))
            fast = self.backend.name != "reference"  # the reference backend keeps exact fp32 products
            y = residual.add_matmul_weight_t_to(self.backend.fprop(xq, wq, out_dtype), weight_fp8, tensor_cores=fast)
        elif residual is not None:  # exact: summed in fp32
            y = (self.backend.fprop(xq, wq, torch.float32) + residual.matmul_weight_t(weight)).to(out_dtype)
        else:
            y = self.backend.fprop(xq, wq, out_dtype)

        if recipe.wgrad_along_tokens:  # X^T [K, M], blocks along the tokens (after the RHT)
            self.x_saved = self._quantize_along_tokens(x2d, recipe.wgrad_input, "input", tensor_scale=input_tokens_scale)
        elif recipe.wgrad_input == recipe.fprop_input:
            self.x_saved = xq
        elif recipe.wgrad_input.is_quantized:
            self.x_saved = quantize_fast(x2d, recipe.wgrad_input, check_finite=self.check, name=f"{self.name} input", clamp=bounds)
        else:  # high-precision wgrad input: the true input, outliers included
            self.x_saved, residual = quantize(x2d, recipe.wgrad_input), None
        self.residual = residual if recipe.occ.compensate_wgrad else None  # forward-only compensation keeps nothing
        self.w_fprop_scale = _dge_scale(weight, wq, recipe) if recipe.dge.enabled else None
        # kept for backward: packed codes and scales only (the FP8 / BF16 operand forms are rebuilt
        # there; an inline OCC operand is its E4M3 elements, 1 B each)
        if self.x_saved.data is None or self.w_saved.data is None:
            raise RuntimeError(f"{self.name}: an operand kept for backward was quantized without its codes (BF16 values only)")
        self.x_saved = dataclasses.replace(self.x_saved, fp8=None, bf16=None)
        self.w_saved = dataclasses.replace(self.w_saved, fp8=None, bf16=None)
        return y

    def _quantize_along_tokens(
        self, tensor2d: torch.Tensor, spec: QuantSpec, what: str, consumed_at_once: bool = False, tensor_scale: torch.Tensor | None = None,
    ) -> QuantizedTensor:
        """[M, C] -> the wgrad GEMM's operand [C, M] (tokens last) in ``spec``, after the RHT if the
        recipe has it (fused on CUDA for NVFP4: ``kernels.quantize_along_tokens_fast``);
        consumed_at_once: its BF16 values alone (no codes), where the backend's GEMM takes them;
        tensor_scale: its NVFP4 tensor scale found beforehand (``kernels.shared_nvfp4_tensor_scales``)."""
        return quantize_along_tokens_fast(
            tensor2d, spec, self.recipe.hadamard_seed, self.recipe.wgrad_hadamard,
            check_finite=self.check, name=f"{self.name} {what} " + ("(--fp4-rht)" if self.recipe.wgrad_hadamard else "(wgrad, along tokens)"),
            bf16_values=consumed_at_once and self.bf16_operands, tensor_scale=tensor_scale, codes=not (consumed_at_once and BF16_OPERANDS_ALONE),
        )

    def quantize_grad_output(self, g2d: torch.Tensor) -> tuple[QuantizedTensor, QuantizedTensor | None]:
        """The output gradient in the dgrad and wgrad formats, with the saved operands' row scales
        folded in where the recipe allows (``megatron_fp4.backward``). With wgrad along the tokens,
        only dgrad's (grad_weight quantizes dY^T itself)."""
        recipe = self.recipe
        if recipe.wgrad_along_tokens:
            self.folded = (False, False)
            # dY in 1x16 blocks and dY^T after the RHT: both tensor scales from one read of dY
            rows_scale, self.grad_tokens_scale = shared_nvfp4_tensor_scales(
                g2d, recipe.dgrad_grad_output, recipe.wgrad_grad_output, recipe.hadamard_seed, recipe.wgrad_hadamard, self.check
            )
            gq = quantize_fast(
                g2d, recipe.dgrad_grad_output, check_finite=self.check, name=f"{self.name} output gradient", bf16_values=self.bf16_operands,
                tensor_scale=rows_scale, codes=not BF16_OPERANDS_ALONE,  # dgrad's alone: its BF16 values
            )
            return gq, None
        fold = recipe.fold_backward_scales
        weight_scale = fold_scale(self.w_saved) if fold and recipe.dgrad_grad_output.is_quantized else None
        input_scale = fold_scale(self.x_saved) if fold and recipe.wgrad_grad_output.is_quantized else None
        self.folded = (weight_scale is not None, input_scale is not None)
        return quantize_grad_output(
            g2d, recipe.dgrad_grad_output, recipe.wgrad_grad_output, weight_scale, input_scale, self.check, f"{self.name} output gradient",
            amax_history=self.grad_amax_history, amax_margin=recipe.grad_amax_margin,
        )

    def grad_input(self, gq_dgrad: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """dX = Q_g(dY diag(s_W)) C_W, or Q_g(dY) Q(W) unfolded (the clamp is straight-through)."""
        weight = self.w_saved.without_scale() if self.folded[0] else self.w_saved
        return self.backend.dgrad(gq_dgrad, weight, out_dtype)

    def grad_weight(self, gq_wgrad: QuantizedTensor, weight: torch.Tensor, g2d: torch.Tensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """dW = (Q_g(diag(s_X) dY)^T C_X) ⊙ f'(W / s_W) + dY^T ΔX (g2d: the unquantized dY), summed
        in fp32 and returned in ``out_dtype``."""
        if self.recipe.wgrad_along_tokens:  # (R dY)^T (R X) = dY^T X in exact arithmetic
            gq_t = self._quantize_along_tokens(g2d, self.recipe.wgrad_grad_output, "output gradient", consumed_at_once=True, tensor_scale=self.grad_tokens_scale)
            self.grad_tokens_scale = None
            # the A B^T GEMM: dY^T X over the tokens, written in the gradient's dtype unless DGE follows
            # (the same rounding as a cast afterwards, without an fp32 pass over dW)
            grad_w = self.backend.fprop(gq_t, self.x_saved, torch.float32 if self.w_fprop_scale is not None else out_dtype)
            if self.w_fprop_scale is not None:
                dge, fmt = self.recipe.dge, self.recipe.fprop_weight.format
                self._record_dge(grad_w, weight)
                grad_w = dge_scale_grad_fast(grad_w.contiguous(), weight, self.w_fprop_scale, fmt, dge.k, dge.max_derivative)
            return grad_w.to(out_dtype)
        saved_input = self.x_saved.without_scale() if self.folded[1] else self.x_saved
        # the DGE or GEMM step writes the result directly, unless an exact residual is summed in fp32
        last_step_casts = self.residual is None or isinstance(self.residual, (HotChannelResidual, FP8Residual))
        grad_w = self.backend.wgrad(gq_wgrad, saved_input, out_dtype if last_step_casts and self.w_fprop_scale is None else torch.float32)
        if self.w_fprop_scale is not None:
            dge, fmt = self.recipe.dge, self.recipe.fprop_weight.format
            self._record_dge(grad_w, weight)
            grad_w = dge_scale_grad_fast(
                grad_w.contiguous(), weight, self.w_fprop_scale, fmt, dge.k, dge.max_derivative, out_dtype if last_step_casts else None
            )
        if isinstance(self.residual, (HotChannelResidual, FP8Residual)):  # accumulated in the output's dtype
            grad_w = self.residual.add_t_matmul_to(grad_w.to(out_dtype), g2d)
        elif self.residual is not None:
            grad_w = self.residual.add_t_matmul_to(grad_w.float(), g2d)
        return grad_w.to(out_dtype)

    def _record_dge(self, grad_w: torch.Tensor, weight: torch.Tensor) -> None:
        """At health intervals: how the DGE factor f'(W / s_W) reshapes this weight gradient."""
        if health.is_collecting():
            dge = self.recipe.dge
            factor = dge_derivative(weight.detach().float() / self.w_fprop_scale, self.recipe.fprop_weight.format, dge.k, dge.max_derivative)
            health.record_weight_gradient(self.name, grad_w, factor, dge.max_derivative)

    def release(self) -> None:
        """Drop the saved operands once backward is done."""
        self.x_saved = self.w_saved = self.w_fprop_scale = self.residual = self.norm_rstd = self.grad_tokens_scale = None


class FP4LinearFunction(torch.autograd.Function):
    """``y = x @ W^T + b`` with the recipe's quantized GEMMs (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias, recipe: FP4Recipe, backend: GemmBackend, grad_amax_history=None):
        state = FP4GemmState(recipe, backend, grad_amax_history=grad_amax_history)
        y = state.forward(x.reshape(-1, x.shape[-1]), weight, torch.float32 if bias is not None else x.dtype)
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
            grad_x = state.grad_input(gq_dgrad, ctx.x_dtype).reshape(ctx.x_shape)
        gq_dgrad = None  # dgrad's operand (with its BF16 form) freed before wgrad's is made
        if ctx.needs_input_grad[1]:
            grad_w = state.grad_weight(gq_wgrad, weight, g2d, weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2d.float().sum(0).to(grad_output.dtype)
        state.release()
        return grad_x, grad_w, grad_b, None, None, None


def fp4_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    recipe: FP4Recipe | None = None,
    backend: GemmBackend | str | None = None,
    grad_amax_history: torch.Tensor | None = None,
) -> torch.Tensor:
    """Functional FP4 linear. ``recipe`` defaults to `paper`; a recipe that quantizes nothing
    (`bf16`) runs ``F.linear`` itself, so it is nn.Linear exactly. grad_amax_history: the float32
    state (``backward.new_grad_amax_state``) a ``grad_amax="delayed"`` recipe keeps between backward passes (``FP4Linear`` owns one)."""
    recipe = recipe or FP4Recipe.paper()
    if not recipe.changes_linear:
        return F.linear(x, weight, bias)
    if not isinstance(backend, GemmBackend):
        backend = get_backend(backend)
    return FP4LinearFunction.apply(x, weight, bias, recipe, backend, grad_amax_history)


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
        # delayed output-gradient scaling's state (recipe.grad_amax); not checkpointed: a resumed run
        # starts from zeros, whose first backward takes the current scales
        self.register_buffer("fp4_grad_amax", new_grad_amax_state(device), persistent=False)
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
        if self.fp4_grad_amax.device != self.weight.device:  # e.g. wrapped from an nn.Linear (built on meta)
            self.fp4_grad_amax = new_grad_amax_state(self.weight.device)
        return fp4_linear(x, self.weight, self.bias, self.recipe, self.backend, self.fp4_grad_amax)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, recipe={self.recipe.name}"
