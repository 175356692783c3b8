"""Weights quantized once per optimizer step, reused by every micro-batch of that step.

With gradient accumulation every micro-batch's forward quantized the same weights again. Inside
``step_scope()`` (the trainer wraps each step's forward/backward schedule in it) the first
quantization of a weight is kept and reused; leaving the scope drops everything, so the next step
(after the optimizer changed the weights) quantizes afresh. Outside a scope nothing is cached: a
custom training loop that never enters one gets exactly the uncached behaviour.

Guard: an entry is keyed on the parameter's identity, storage and autograd version counter, so an
in-place change inside the scope (``weight.add_(...)``) misses the cache. (Writes through
``weight.data`` bypass the version counter; the optimizer writes that way, which is why the scope,
not the version, is what bounds the cache's life.) Cost: the quantized weights of every layer stay
alive for the step (packed codes + scales, the FP8 operand where the fast kernel made one, and W's
E4M3 form for FP8 OCC: ~1.5-2.5 B per weight element of the whole model, 10-17 GB for 7B at
TP = 1; NVFP4 / MXFP4 weights also keep their BF16 operand on Hopper, 2 B more per element). Measured on an H100 (benchmarks/NOTES.md, session 4) it saved ~1% of GPU time and no
wall time, so it is off by default: ``MEGATRON_FP4_WEIGHT_CACHE=1`` turns it on.
"""

from __future__ import annotations

import contextlib
import os

import torch

__all__ = ["step_scope", "in_scope", "cached", "entries"]

_STATE: dict = {"depth": 0, "entries": {}}


@contextlib.contextmanager
def step_scope():
    """Cache weight quantizations until the block ends (nested scopes share the outer one)."""
    _STATE["depth"] += 1
    try:
        yield
    finally:
        _STATE["depth"] -= 1
        if _STATE["depth"] == 0:
            _STATE["entries"] = {}


def enabled() -> bool:
    return os.environ.get("MEGATRON_FP4_WEIGHT_CACHE", "0") not in ("", "0", "false", "False", "off")


def in_scope() -> bool:
    return _STATE["depth"] > 0 and enabled()


def entries() -> int:
    return len(_STATE["entries"])


def cached(weight: torch.Tensor, key, compute):
    """``compute()`` once per (weight, key) inside a scope; every call outside one."""
    if not in_scope():
        return compute()
    full_key = (id(weight), weight.data_ptr(), weight._version, weight.shape, key)
    found = _STATE["entries"].get(full_key)
    if found is None:
        found = _STATE["entries"][full_key] = compute()
    return found
