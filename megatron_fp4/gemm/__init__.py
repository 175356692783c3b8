"""GEMM backends behind one seam (see ``backend``); importing this registers the built-in ones."""

from .backend import BACKEND_ENV, GemmBackend, available_backends, get_backend, register_backend
from .hopper import HopperBackend
from .reference import ReferenceBackend

__all__ = ["BACKEND_ENV", "GemmBackend", "HopperBackend", "ReferenceBackend", "available_backends", "get_backend", "register_backend"]
