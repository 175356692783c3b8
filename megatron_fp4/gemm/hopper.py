"""Hopper backend: FP4-valued operands on FP8 tensor cores (``torch._scaled_mm``).

Every E2M1 value is exact in FP8 E4M3, so each of a linear layer's GEMMs runs as an FP8 GEMM
whose scales stay outside the sum:
    fprop  Y  = diag(s_X) (C_X C_W^T) diag(s_W)        row-wise scales in the epilogue
    dgrad  dX = s_g · (G_d C_W)                          G_d = Q8(dY diag(s_W)), tensor scale s_g
    wgrad  dW = s_g · (G_w^T C_X)                        G_w = Q8(diag(s_X) dY)
(C: E2M1 elements as E4M3 bytes; dgrad/wgrad take the folded operands of ``megatron_fp4.backward``.)
Products of E2M1 and FP8 values are exact and accumulate in fp32, so results equal the
reference backend's up to accumulation order (and the bf16 rounding of fprop's output where
this PyTorch cannot write fp32 with row-wise scales). The B operands are rebuilt from the saved
packed codes as transposed E4M3 tiles by a Triton kernel. Block-scaled FP4 operands (NVFP4,
MXFP4) go to ``megatron_fp4.kernels.block_gemm`` (BF16 tensor cores, exact products) for all
three GEMMs (dgrad reads W transposed in place: 16x16 tiles, or 1-D blocks decoded to BF16).
Other operands it cannot take (unfolded row scales on the reduction dimension, dims not
multiples of 16) go to the reference backend (so do CPU tensors), so results never depend on
which path ran.
"""

from __future__ import annotations

import torch

from ..quantize import QuantizedTensor
from .backend import GemmBackend, register_backend
from .reference import ReferenceBackend

__all__ = ["HopperBackend", "rowwise_scaled_mm"]

FP8_GRAD_DTYPES = ("fp8_e5m2", "fp8_e4m3")


def _is_e2m1(q: QuantizedTensor) -> bool:
    return q.spec.dtype == "fp4" and q.spec.fp4_format == "e2m1"


def _aligned(*dims: int) -> bool:
    return all(d % 16 == 0 for d in dims)


def _fp8_rows(q: QuantizedTensor) -> torch.Tensor:
    """The E2M1 elements as E4M3 [rows, K] (the fused quantizer's copy, else rebuilt from codes;
    an ``inline`` OCC operand is E4M3 already)."""
    if q.outliers_e4m3:
        return q.data
    if q.fp8 is not None:
        return q.fp8
    from ..kernels.quantize_rows import fp8_from_codes

    return fp8_from_codes(q.data)


def _fp8_transposed(q: QuantizedTensor) -> torch.Tensor:
    """The E2M1 elements as E4M3, transposed: [K, rows] contiguous."""
    from ..kernels.codes_to_fp8 import bytes_t, codes_to_fp8_t

    return bytes_t(q.data) if q.outliers_e4m3 else codes_to_fp8_t(q.data)


_FP32_ROWWISE_OUTPUT = {"supported": True}  # becomes False if this PyTorch refuses fp32 row-wise output


def rowwise_scaled_mm(a: torch.Tensor, b: torch.Tensor, scale_a: torch.Tensor, scale_b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
    """diag(scale_a) (A B^T) diag(scale_b) for FP8 A [M, K], B [N, K] (row-major) and fp32 row
    scales [M, 1], [N, 1], on FP8 tensor cores, in ``out_dtype``: fp32 where this PyTorch writes
    it with row-wise scales, else a 16-bit result cast (remembered after the first refusal)."""
    if out_dtype == torch.float32 and _FP32_ROWWISE_OUTPUT["supported"]:
        try:
            return torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b.t(), out_dtype=torch.float32)
        except (RuntimeError, NotImplementedError):
            _FP32_ROWWISE_OUTPUT["supported"] = False
    written = out_dtype if out_dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
    return torch._scaled_mm(a, b.t(), scale_a=scale_a, scale_b=scale_b.t(), out_dtype=written).to(out_dtype)


_UNIT_SCALES: dict[torch.device, torch.Tensor] = {}


def _unit_scale(device: torch.device) -> torch.Tensor:
    """A read-only fp32 1 on ``device`` for ``_scaled_mm``'s unit operand scale, made once per
    device (not per GEMM: a launch and an allocation each time), never inside a graph capture."""
    one = _UNIT_SCALES.get(device)
    if one is None:
        one = torch.ones((), dtype=torch.float32, device=device)
        if not torch.cuda.is_current_stream_capturing():
            _UNIT_SCALES[device] = one
    return one


class HopperBackend(GemmBackend):
    name = "hopper"
    block_operands_as_bf16 = True  # the block GEMM runs on BF16 tensor cores (``kernels.block_gemm``)

    def __init__(self) -> None:
        self.fallback = ReferenceBackend()

    @classmethod
    def is_available(cls) -> bool:
        return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (9, 0) and hasattr(torch, "_scaled_mm")

    def supports(self, a: QuantizedTensor, b: QuantizedTensor) -> bool:
        """fprop: row-scaled E2M1 activation and weight, dims multiples of 16."""
        row_e2m1 = all(_is_e2m1(q) and q.spec.granularity == "row" and q.scale is not None for q in (a, b))
        return row_e2m1 and a.data.is_cuda and _aligned(a.data.shape[0], a.shape[-1], b.data.shape[0])

    def supports_backward(self, g: QuantizedTensor, operand: QuantizedTensor) -> bool:
        """dgrad/wgrad: FP8 tensor-scaled gradient and a folded (unit-scale) E2M1 operand."""
        fp8_grad = g.spec.dtype in FP8_GRAD_DTYPES and g.spec.granularity == "tensor"
        folded = _is_e2m1(operand) and operand.scale is None
        return fp8_grad and folded and g.data.is_cuda and _aligned(*g.data.shape, operand.shape[-1])

    @staticmethod
    def _block_scaled(a: QuantizedTensor, b: QuantizedTensor) -> bool:
        from ..kernels.block_gemm import supports_block_gemm

        return a.device.type == "cuda" and supports_block_gemm(a, b)

    def fprop(self, x: QuantizedTensor, w: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self._block_scaled(x, w):  # NVFP4/MXFP4 operands: the block-scaled GEMM on BF16 tensor cores
            from ..kernels.block_gemm import block_scaled_matmul

            return block_scaled_matmul(x, w, out_dtype)
        if not self.supports(x, w):
            return self.fallback.fprop(x, w, out_dtype)
        return rowwise_scaled_mm(_fp8_rows(x), _fp8_rows(w), x.scale, w.scale, out_dtype)

    def dgrad(self, g: QuantizedTensor, w: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self._block_scaled(g, w):  # W read as W^T in place: 16x16 tiles, or 1-D blocks decoded to exact BF16
            from ..kernels.block_gemm import block_scaled_matmul, transposed_b_supported

            if transposed_b_supported(w, out_dtype):
                return block_scaled_matmul(g, w, out_dtype, b_transposed=True)
        if not self.supports_backward(g, w):
            return self.fallback.dgrad(g, w, out_dtype)
        return torch._scaled_mm(
            g.data.contiguous(), _fp8_transposed(w).t(), scale_a=g.scale.reshape(()), scale_b=_unit_scale(g.data.device), out_dtype=out_dtype
        )

    def wgrad(self, g: QuantizedTensor, x: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if not self.supports_backward(g, x):
            return self.fallback.wgrad(g, x, out_dtype)
        g_t = g.data.t().contiguous()  # already contiguous when the fused quantizer wrote it
        return torch._scaled_mm(g_t, _fp8_transposed(x).t(), scale_a=g.scale.reshape(()), scale_b=_unit_scale(g.data.device), out_dtype=out_dtype)


register_backend("hopper", HopperBackend, auto_priority=10)
