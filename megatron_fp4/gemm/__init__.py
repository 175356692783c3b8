"""GEMM backends behind one seam (see ``backend``); importing this registers the built-in ones.

Automatic choice, first available: `blackwell` (sm100+, native FP4 fprop; untested here),
`hopper` (sm90+, FP4 values on FP8 tensor cores), `reference` (exact fp32, everywhere).
Override with ``MEGATRON_FP4_GEMM_BACKEND`` or ``--fp4-gemm-backend``.
"""

from .backend import BACKEND_ENV, GemmBackend, available_backends, get_backend, register_backend
from .blackwell import BlackwellBackend
from .hopper import HopperBackend
from .reference import ReferenceBackend

__all__ = [
    "BACKEND_ENV",
    "BlackwellBackend",
    "GemmBackend",
    "HopperBackend",
    "ReferenceBackend",
    "available_backends",
    "get_backend",
    "register_backend",
]
