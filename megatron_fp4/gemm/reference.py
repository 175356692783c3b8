"""The exact reference GEMM backend: dequantize both operands, multiply in fp32.

Because every FP4/FP8 value and every scale is exactly representable in fp32, this computes the
true product of the quantized operands up to fp32 accumulation rounding. It is what the fast
backends are tested against and what runs on CPU.
"""

from __future__ import annotations

import torch

from ..quantize import QuantizedTensor
from .backend import GemmBackend, register_backend

__all__ = ["ReferenceBackend"]


class ReferenceBackend(GemmBackend):
    name = "reference"

    def fprop(self, x: QuantizedTensor, w: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (x.dequantize_2d() @ w.dequantize_2d().t()).to(out_dtype)

    def dgrad(self, g: QuantizedTensor, w: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (g.dequantize_2d() @ w.dequantize_2d()).to(out_dtype)

    def wgrad(self, g: QuantizedTensor, x: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (g.dequantize_2d().t() @ x.dequantize_2d()).to(out_dtype)


register_backend("reference", ReferenceBackend, auto_priority=100)
