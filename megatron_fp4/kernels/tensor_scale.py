"""A tensor's decode scale from partial maxima, on the device, in one launch.

Per-tensor scales (NVFP4's second level: amax / (6 x 448)) are first reduced per tile by the
quantizer's own pass; turning those partial maxima into the scale took ~10 small PyTorch
kernels per quantization (amax, comparisons, divisions, ``where``s), each a host launch that an
FP4 linear pays four times per fwd+bwd. This kernel does it in one, with
``scaling.absmax_scale``'s rule: amax / max_value, 1 for an all-zero tensor, NaN when any partial
is NaN or Inf. ``tensor_scale_reference`` is that rule in PyTorch; the test compares bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..scaling import absmax_scale
from .quantize_rows import _max_keeping_nan

__all__ = ["tensor_scale_from_partials", "tensor_scale_reference"]


@triton.jit
def _tensor_scale_kernel(partial_ptr, scale_ptr, n_partial, max_value, BLOCK: tl.constexpr):
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, n_partial, BLOCK):
        index = start + tl.arange(0, BLOCK)
        amax = _max_keeping_nan(amax, tl.load(partial_ptr + index, mask=index < n_partial, other=0.0))
    total = tl.reduce(amax, 0, _max_keeping_nan)
    scale = tl.where(total > 0, tl.math.div_rn(total, max_value), 1.0)
    tl.store(scale_ptr, tl.where((total != total) | (total == float("inf")), float("nan"), scale))


def tensor_scale_from_partials(partial: torch.Tensor, max_value: float) -> torch.Tensor:
    """fp32 scale [] of a tensor whose per-tile |x| maxima are ``partial`` (fp32, any shape)."""
    partial = partial.reshape(-1)
    if partial.dtype != torch.float32 or partial.numel() == 0:
        raise ValueError(f"tensor_scale_from_partials: needs a non-empty fp32 tensor of partial maxima, got {partial.dtype} x {partial.numel()}")
    scale = torch.empty((), dtype=torch.float32, device=partial.device)
    _tensor_scale_kernel[(1,)](partial.contiguous(), scale, partial.numel(), float(max_value), BLOCK=1024)
    return scale


def tensor_scale_reference(partial: torch.Tensor, max_value: float) -> torch.Tensor:
    """The PyTorch form: ``absmax_scale(partial.amax(), max_value)``."""
    return absmax_scale(partial.reshape(-1).amax(), max_value)
