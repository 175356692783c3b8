"""Triton kernels, each beside its PyTorch reference; ``quantize_fast`` picks one where it applies.

Kernels are exact re-implementations of the reference quantizers (tested bit for bit), so the
dispatch changes speed, never results; the one exception is the NVFP4 recipe's random Hadamard
transform, whose 16-term sums run in another order (``quantize_nvfp4``, bound in its test). On
CPU they run only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import dataclasses

import torch

from ..dge import dge_scale_weight_grad
from ..formats import E2M1
from ..quantize import QuantizedTensor, QuantSpec, check_finite_enabled, quantize

__all__ = ["quantize_fast", "quantize_along_tokens_fast", "quantize_grad_fast", "dge_scale_grad_fast", "shared_nvfp4_tensor_scales", "triton_available"]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def nvfp4_kernel_enabled() -> bool:
    """Whether the NVFP4 recipe quantizer (``quantize_nvfp4``: 16x16 tiles, stochastic rounding,
    along the tokens with the RHT; since session 9 also MXFP4 along the tokens and MXFP4 with
    stochastic rounding) replaces the PyTorch reference on CUDA: on by default since its GPU tests
    (tests/kernel_tests/test_quantize_nvfp4.py) passed on an H100 (session 5);
    ``MEGATRON_FP4_NVFP4_KERNEL=0`` runs the reference instead (same values, see the test)."""
    import os

    return os.environ.get("MEGATRON_FP4_NVFP4_KERNEL", "1") not in ("0", "false", "False", "off")


def quantize_fast(
    x: torch.Tensor,
    spec: QuantSpec,
    *,
    check_finite: bool | None = None,
    name: str = "tensor",
    clamp: tuple[torch.Tensor, torch.Tensor] | None = None,
    bf16_values: bool = False,
    tensor_scale: torch.Tensor | None = None,
    codes: bool = True,
) -> QuantizedTensor:
    """``quantize(clamp(x))`` through a fused kernel on CUDA where one exists for ``spec``, else
    the reference. clamp: optional (low, high) bounds in x's dtype (OCC); scalar bounds are
    applied inside the kernel, per-row ones by a clamp before it. bf16_values: for an NVFP4 /
    MXFP4 operand its GEMM consumes at once, the block kernels also write its BF16 values
    (``QuantizedTensor.bf16``), so the block GEMM reads no codes again (other paths ignore it).
    tensor_scale: NVFP4's tensor scale of x from ``shared_nvfp4_tensor_scales`` (the value the
    kernel would find itself; the reference finds its own). codes=False: where the block kernels
    write the BF16 values, those only (``QuantizedTensor.data`` None), for an operand nothing
    keeps after its GEMM (the reference and the other kernels write codes regardless)."""
    values_only = bf16_values and not codes
    checking = check_finite if check_finite is not None else check_finite_enabled()
    fused = x.is_cuda and triton_available()
    if fused and clamp is None:
        from .quantize_blocks import quantize_blocks, supports_block_spec
        from .quantize_nvfp4 import quantize_nvfp4, supports_nvfp4_spec

        tiles = spec.granularity == "nvfp4_2d" and not spec.stochastic_rounding
        stochastic_blocks = spec.granularity in ("nvfp4", "mxfp4") and spec.stochastic_rounding
        if nvfp4_kernel_enabled() and supports_nvfp4_spec(spec) and (tiles or stochastic_blocks) and x.dim() >= 2:
            x2d = x.reshape(-1, x.shape[-1])
            if (checking and not torch.isfinite(x).all()) or x2d.shape[-1] % spec.block_size or (tiles and x2d.shape[0] % 16):
                return quantize(x, spec, check_finite=checking, name=name)  # raises, naming the tensor / shape
            from ..stochastic import new_seed

            seed = new_seed(x.device) if stochastic_blocks else None  # the reference's seed draw
            q = quantize_nvfp4(
                x2d, tiles=tiles, seed=seed, block_format="mxfp4" if spec.granularity == "mxfp4" else "nvfp4", values=bf16_values,
                global_scale=tensor_scale if spec.granularity == "nvfp4" else None, codes=not values_only,
            )
            return dataclasses.replace(q, shape=x.shape, dtype=x.dtype)
        if supports_block_spec(spec):
            if checking and not torch.isfinite(x).all():
                quantize(x, spec, check_finite=True, name=name)  # raises, naming the tensor
            if x.shape[-1] % spec.block_size:
                quantize(x, spec, name=name)  # raises, naming the tensor and the block size
            return quantize_blocks(x, spec, values=bf16_values, global_scale=tensor_scale if spec.granularity == "nvfp4" else None, codes=not values_only)
    if fused:
        from .quantize_rows import quantize_rows, supports_spec

        fused = supports_spec(spec)
    if clamp is not None and not (fused and clamp[0].numel() == 1 and clamp[1].numel() == 1):
        low, high = clamp
        x, clamp = torch.maximum(torch.minimum(x, high), low), None  # NaN stays NaN, as the kernel
    if not fused:
        return quantize(x, spec, check_finite=check_finite, name=name)
    if checking and not torch.isfinite(x).all():
        quantize(x, spec, check_finite=True, name=name)  # raises, naming the tensor
    from ..occ import stacked_bounds

    bounds = None if clamp is None else stacked_bounds(clamp)
    return quantize_rows(x, bounds)


def quantize_grad_fast(g2d, dgrad_spec, wgrad_spec, weight_scale, input_scale, check: bool, name: str, amax_history=None, amax_margin: int = 0):
    """The fused folded gradient quantizer on CUDA for FP8 `tensor` specs (delayed scaling with
    ``amax_history`` and ``amax_margin``), else None (caller runs the reference, ``megatron_fp4.backward``)."""
    if not (g2d.is_cuda and triton_available()):
        return None
    from .quantize_grad import quantize_grad_folded, supports_grad_specs

    if not supports_grad_specs(dgrad_spec, wgrad_spec):
        return None
    if (check or check_finite_enabled()) and not torch.isfinite(g2d).all():
        quantize(g2d, dgrad_spec, check_finite=True, name=name)  # raises, naming the tensor
    return quantize_grad_folded(g2d, dgrad_spec, wgrad_spec, weight_scale, input_scale, amax_history=amax_history, amax_margin=amax_margin)


def dge_scale_grad_fast(
    grad_w: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, fmt, k: float, max_derivative: float, out_dtype: torch.dtype | None = None
) -> torch.Tensor:
    """grad_w ⊙ f'(W / s_W) (DGE, grid ``fmt``) in ``out_dtype`` (default fp32): the fused E2M1
    kernel on CUDA, else the reference."""
    fused = fmt is E2M1 and scale.shape == (weight.shape[0], 1)
    if fused and grad_w.is_cuda and triton_available() and grad_w.dtype == torch.float32 and grad_w.is_contiguous():
        from .dge_grad import dge_scale_grad

        return dge_scale_grad(grad_w, weight, scale, k, max_derivative, out_dtype)
    return dge_scale_weight_grad(grad_w, weight, scale, fmt, k, max_derivative).to(out_dtype or torch.float32)


def quantize_along_tokens_fast(
    tensor2d: torch.Tensor, spec: QuantSpec, rht_seed: int | None, use_rht: bool, *, check_finite: bool, name: str, bf16_values: bool = False,
    tensor_scale: torch.Tensor | None = None, codes: bool = True,
) -> QuantizedTensor:
    """The weight-gradient operand of a recipe quantized along the tokens: ``quantize`` of
    (R16 tensor2d)^T [C, M] (the RHT only with ``use_rht``). The fused NVFP4 kernel on CUDA (its
    stochastic rounding computes the reference's Philox numbers for the same seed), else the
    reference (``hadamard.apply_rht`` then ``quantize``), which also names bad shapes.
    bf16_values, tensor_scale, codes: as ``quantize_fast``'s (the kernels also write the BF16
    operand; the operand's NVFP4 tensor scale found beforehand, taken by the RHT path; the BF16
    operand only)."""
    values_only = bf16_values and not codes
    from ..hadamard import RHT_BLOCK, apply_rht, rht_matrix

    fused = tensor2d.is_cuda and triton_available() and spec.granularity in ("nvfp4", "mxfp4") and nvfp4_kernel_enabled()
    if fused:
        from .quantize_nvfp4 import quantize_nvfp4, supports_nvfp4_spec

        fused = supports_nvfp4_spec(spec) and tensor2d.shape[0] % max(RHT_BLOCK, spec.block_size) == 0 and tensor2d.shape[1] % 2 == 0
        fused = fused and not ((check_finite or check_finite_enabled()) and not torch.isfinite(tensor2d).all())
    if not fused:
        operand = apply_rht(tensor2d, rht_seed, name) if use_rht else tensor2d
        return quantize(operand.float().t().contiguous(), spec, check_finite=check_finite, name=name)
    from ..stochastic import new_seed

    seed = new_seed(tensor2d.device) if spec.stochastic_rounding else None  # drawn where the reference draws it
    if tensor2d.dtype == torch.bfloat16 and not use_rht:  # token pairs in 32-bit words, no transposing layout
        from .quantize_tokens import quantize_along_tokens_bf16  # change (quantize_tokens; with the RHT it measured slower)

        return quantize_along_tokens_bf16(tensor2d, seed=seed, block_format=spec.granularity, values=bf16_values, codes=not values_only)
    rht = rht_matrix(rht_seed, device=tensor2d.device) if use_rht else None
    return quantize_nvfp4(
        tensor2d, along_tokens=True, rht=rht, seed=seed, block_format=spec.granularity, values=bf16_values,
        global_scale=tensor_scale if spec.granularity == "nvfp4" and use_rht else None, codes=not values_only,
    )


def shared_nvfp4_tensor_scales(
    tensor2d: torch.Tensor, rows_spec: QuantSpec, tokens_spec: QuantSpec, rht_seed: int | None, use_rht: bool, check_finite: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(tensor scale of ``tensor2d``, tensor scale of (R16 tensor2d)^T) from one read, for a tensor
    quantized both in 1x16 NVFP4 blocks (``quantize_fast``'s ``tensor_scale``) and along the
    tokens after the RHT (``quantize_along_tokens_fast``'s): NVIDIA's recipe quantizes its input
    and its output gradient so. (None, None) where either quantization does not take the fused
    kernels (they find their own scales, or the reference does)."""
    fused = tensor2d.is_cuda and triton_available() and nvfp4_kernel_enabled() and use_rht and tensor2d.dim() == 2
    fused = fused and rows_spec.granularity == "nvfp4" and tokens_spec.granularity == "nvfp4" and not rows_spec.power_of_two_scale
    fused = fused and tokens_spec.fp4_format == rows_spec.fp4_format == "e2m1" and tensor2d.shape[0] % 16 == 0 and tensor2d.shape[1] % 16 == 0
    if not fused or check_finite or check_finite_enabled():  # checking: each quantization checks (and names) on its own
        return None, None
    from ..hadamard import rht_matrix
    from .quantize_nvfp4 import tensor_scales_with_rht

    return tensor_scales_with_rht(tensor2d, rht_matrix(rht_seed, device=tensor2d.device), stochastic=tokens_spec.stochastic_rounding)
