"""The GEMM backend seam: one interface, several implementations, chosen by name or automatically.

A backend computes the three GEMMs of a linear layer from quantized operands; they accumulate in
fp32 and return ``out_dtype`` (fp32 by default; a fast backend writes a bf16 result directly
instead of an fp32 tensor that is cast afterwards):
    fprop(x, w)  = X @ W^T     x: [M, K], w: [N, K]
    dgrad(g, w)  = dY @ W      g: [M, N], w: [N, K]
    wgrad(g, x)  = dY^T @ X    g: [M, N], x: [M, K]
`reference` (exact: dequantize, multiply in fp32) works everywhere; `hopper` (FP4 values on FP8
tensor cores) and `blackwell` (native FP4) register themselves where they exist.
"""

from __future__ import annotations

import abc
import os
from typing import Callable

import torch

from ..quantize import QuantizedTensor

__all__ = ["GemmBackend", "register_backend", "get_backend", "available_backends", "BACKEND_ENV"]

BACKEND_ENV = "MEGATRON_FP4_GEMM_BACKEND"


class GemmBackend(abc.ABC):
    """Computes a linear layer's GEMMs on quantized operands (fp32 results)."""

    name: str = "abstract"
    # whether its block-scaled GEMM runs on BF16 operands, so the quantizers should also write an
    # operand's BF16 values where its GEMM consumes it at once (``QuantizedTensor.bf16``)
    block_operands_as_bf16: bool = False

    @classmethod
    def is_available(cls) -> bool:
        """Whether this backend can run on this machine."""
        return True

    def supports(self, a: QuantizedTensor, b: QuantizedTensor) -> bool:
        """Whether this backend takes these operand formats (else the reference runs)."""
        return True

    @abc.abstractmethod
    def fprop(self, x: QuantizedTensor, w: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor: ...

    @abc.abstractmethod
    def dgrad(self, g: QuantizedTensor, w: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor: ...

    @abc.abstractmethod
    def wgrad(self, g: QuantizedTensor, x: QuantizedTensor, out_dtype: torch.dtype = torch.float32) -> torch.Tensor: ...


_REGISTRY: dict[str, Callable[[], GemmBackend]] = {}
_PRIORITY: dict[str, int] = {}  # automatic choice: the available backend of lowest priority wins


def register_backend(name: str, factory: Callable[[], GemmBackend], auto_priority: int | None = None) -> None:
    """Make a backend selectable by ``name``; ``auto_priority`` (lower first) enters it in 'auto'."""
    _REGISTRY[name] = factory
    for key in [key for key in _AVAILABLE if key[0] == name]:  # a re-registered name is asked again
        del _AVAILABLE[key]
    if auto_priority is not None:
        _PRIORITY[name] = auto_priority


def _device_key() -> int | None:
    """The CUDA device availability is judged on (a backend's answer can differ per device)."""
    return torch.cuda.current_device() if torch.cuda.is_initialized() else None


_AVAILABLE: dict[tuple[str, int | None], bool] = {}


def _is_available(name: str) -> bool:
    """Whether backend ``name`` runs here, asked once per (backend, device): the answer is a
    hardware fact, and asking costs device-property queries that made ``get_backend`` a quarter
    of an FP4 linear's host time when it ran per call (benchmarks/NOTES.md, session 5)."""
    key = (name, _device_key())
    if key not in _AVAILABLE:
        factory = _REGISTRY[name]
        _AVAILABLE[key] = bool(getattr(factory, "is_available", lambda: True)())
    return _AVAILABLE[key]


def available_backends() -> list[str]:
    return [name for name in _REGISTRY if _is_available(name)]


_INSTANCES: dict[str, GemmBackend] = {}


def get_backend(name: str | None = None) -> GemmBackend:
    """The backend ``name`` (default: the ``MEGATRON_FP4_GEMM_BACKEND`` override, else 'auto')."""
    name = name or os.environ.get(BACKEND_ENV, "auto")
    if name == "auto":
        name = min((n for n in _PRIORITY if _is_available(n)), key=_PRIORITY.__getitem__)
    if name not in _REGISTRY:
        raise ValueError(f"unknown FP4 GEMM backend {name!r}; allowed: {['auto', *sorted(_REGISTRY)]}")
    if not _is_available(name):
        raise ValueError(f"FP4 GEMM backend {name!r} is not available on this machine; available: {available_backends()}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _REGISTRY[name]()
    return _INSTANCES[name]
