"""GEMM backends behind one seam (see ``backend``); importing this registers the built-in ones."""

from .backend import BACKEND_ENV, GemmBackend, available_backends, get_backend, register_backend
from .reference import ReferenceBackend

__all__ = ["BACKEND_ENV", "GemmBackend", "ReferenceBackend", "available_backends", "get_backend", "register_backend"]
