"""Triton kernels, each beside its PyTorch reference; ``quantize_fast`` picks one where it applies.

Kernels are exact re-implementations of the reference quantizers (tested bit for bit), so the
dispatch changes speed, never results. On CPU they run only under ``TRITON_INTERPRET=1`` (tests).
"""

from __future__ import annotations

import torch

from ..quantize import QuantizedTensor, QuantSpec, check_finite_enabled, quantize

__all__ = ["quantize_fast", "triton_available"]


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:
        return False
    return True


def quantize_fast(x: torch.Tensor, spec: QuantSpec, *, check_finite: bool | None = None, name: str = "tensor") -> QuantizedTensor:
    """``quantize`` through a fused kernel on CUDA where one exists for ``spec``, else the reference."""
    if x.is_cuda and triton_available():
        from .quantize_rows import quantize_rows, supports_spec

        if supports_spec(spec):
            checking = check_finite if check_finite is not None else check_finite_enabled()
            if checking and not torch.isfinite(x).all():
                quantize(x, spec, check_finite=True, name=name)  # raises, naming the tensor
            return quantize_rows(x)
    return quantize(x, spec, check_finite=check_finite, name=name)
