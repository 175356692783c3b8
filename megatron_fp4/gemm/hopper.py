"""Hopper backend: FP4-valued operands on FP8 tensor cores (``torch._scaled_mm``).

Every E2M1 value is exact in FP8 E4M3, so an FP4 GEMM with per-row activation scales and
per-output-channel weight scales runs as an FP8 GEMM whose row/column scales are applied in the
epilogue: ``Y = diag(s_X) (q_X q_W^T) diag(s_W)``. The products of E2M1 values are exact and
accumulate in fp32, so the result equals the reference backend's up to accumulation order and
the bf16 rounding of the output (``_scaled_mm`` with row-wise scales writes bf16).

Covered now: fprop with `row`-granular E2M1 operands. dgrad and wgrad carry the weight's
per-channel and the activation's per-token scales on their reduction dimension, where an FP8
GEMM cannot apply them; they run on the reference backend until the transposed quantizers of
the fast path exist. Selected with ``MEGATRON_FP4_GEMM_BACKEND=hopper`` (not yet by 'auto').
"""

from __future__ import annotations

import torch

from ..quantize import QuantizedTensor
from .backend import GemmBackend, register_backend
from .reference import ReferenceBackend

__all__ = ["HopperBackend"]


def _fp8_operand(q: QuantizedTensor) -> torch.Tensor:
    if q.fp8 is not None:
        return q.fp8
    from ..kernels.quantize_rows import fp8_from_codes

    return fp8_from_codes(q.data)


class HopperBackend(GemmBackend):
    name = "hopper"

    def __init__(self) -> None:
        self.fallback = ReferenceBackend()

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0) and hasattr(torch, "_scaled_mm")

    def supports(self, a: QuantizedTensor, b: QuantizedTensor) -> bool:
        row_fp4 = all(q.spec.dtype == "fp4" and q.spec.granularity == "row" and q.spec.fp4_format == "e2m1" for q in (a, b))
        rows, k = a.data.shape[0], a.shape[-1]
        return row_fp4 and rows % 16 == 0 and k % 16 == 0 and b.data.shape[0] % 16 == 0

    def fprop(self, x: QuantizedTensor, w: QuantizedTensor) -> torch.Tensor:
        if not self.supports(x, w):
            return self.fallback.fprop(x, w)
        out = torch._scaled_mm(
            _fp8_operand(x), _fp8_operand(w).t(), scale_a=x.scale, scale_b=w.scale.t(), out_dtype=torch.bfloat16
        )
        return out.float()

    def dgrad(self, g: QuantizedTensor, w: QuantizedTensor) -> torch.Tensor:
        return self.fallback.dgrad(g, w)

    def wgrad(self, g: QuantizedTensor, x: QuantizedTensor) -> torch.Tensor:
        return self.fallback.wgrad(g, x)


register_backend("hopper", HopperBackend)
