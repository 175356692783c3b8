"""What upstream's start-up may skip in a megatron-core wheel install."""

from __future__ import annotations

__all__ = ["dataset_helpers_compiled"]


def dataset_helpers_compiled() -> bool:
    """Whether megatron-core's C++ dataset helpers import (the PyPI wheel ships them compiled;
    upstream's start-up runs ``make`` for them, which fails without the source Makefile)."""
    try:
        from megatron.core.datasets import helpers_cpp  # noqa: F401
    except ImportError:
        return False
    return True
