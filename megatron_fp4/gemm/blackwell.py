"""Blackwell backend (sm100+): fprop on native FP4 tensor cores; UNTESTED here (no such GPU).

Native FP4 GEMMs (``torch.float4_e2m1fn_x2`` operands in ``torch._scaled_mm``) take block
scales along K. The `paper` recipe's scales are per row, outside the sum, so the GEMM runs on
the bare E2M1 elements with every MX block scale equal to 1 (E8M0 byte 127: with all scales
equal their swizzled layout does not matter) and the row scales are applied afterwards:
``Y = (C_X C_W^T) ⊙ (s_X s_W^T)``. The packed codes are already in the hardware layout (low
nibble first, E2M1 bit patterns). dgrad and wgrad use the FP8 tensor-core path inherited from
``HopperBackend`` (FP8 GEMMs also run on Blackwell), as does the fprop of an activation whose
OCC outliers are carried as E4M3 (``inline`` compensation: not expressible in native FP4).
Only selected where ``is_available`` holds, and never tested by us: check it against
``reference`` (tests/test_cuda.py does) before trusting it.
"""

from __future__ import annotations

import torch

from ..quantize import QuantizedTensor
from .backend import register_backend
from .hopper import HopperBackend

__all__ = ["BlackwellBackend"]

MX_BLOCK = 32
E8M0_ONE = 127


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def _unit_block_scales(rows: int, k: int, device) -> torch.Tensor:
    """E8M0 scales of 1.0 in the size of cuBLAS's swizzled MX scale layout (128 x 4 tiles)."""
    count = _round_up(rows, 128) * _round_up(k // MX_BLOCK, 4)
    return torch.full((count,), E8M0_ONE, dtype=torch.uint8, device=device).view(torch.float8_e8m0fnu)


class BlackwellBackend(HopperBackend):
    name = "blackwell"

    @classmethod
    def is_available(cls) -> bool:
        return (
            torch.cuda.is_available()
            and torch.cuda.get_device_capability() >= (10, 0)
            and hasattr(torch, "float4_e2m1fn_x2")
            and hasattr(torch, "float8_e8m0fnu")
        )

    def fprop(self, x: QuantizedTensor, w: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not (self.supports(x, w) and x.shape[-1] % MX_BLOCK == 0) or x.outliers_e4m3:  # E4M3 outliers: FP8 GEMM
            return super().fprop(x, w, out_dtype)
        k = x.shape[-1]
        a = x.data.view(torch.float4_e2m1fn_x2)
        b = w.data.view(torch.float4_e2m1fn_x2).t()
        product = torch._scaled_mm(
            a, b,
            scale_a=_unit_block_scales(a.shape[0], k, a.device),
            scale_b=_unit_block_scales(w.data.shape[0], k, a.device),
            out_dtype=torch.float32,
        )
        return (product * x.scale * w.scale.t()).to(out_dtype)


register_backend("blackwell", BlackwellBackend, auto_priority=0)
