"""FP4 health: per-layer statistics of the activation quantization, collected on request.

While ``collecting()`` is active, every FP4 linear records, for its input: the OCC clamp
fraction (share of entries clamped), the share of non-zero values flushed to zero by FP4
rounding (underflow, the failure OCC is for), and the SNR in dB of the reconstruction the GEMM
actually uses (Q(clamp X) plus the compensated residual). Off, it costs one flag check per GEMM.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch

__all__ = ["collecting", "is_collecting", "record_input", "summarize"]

_STATE = {"active": False, "records": defaultdict(list)}


def is_collecting() -> bool:
    return _STATE["active"]


@contextlib.contextmanager
def collecting():
    """Collect health records inside the block; yields the dict {layer: [record, ...]}."""
    _STATE["active"], _STATE["records"] = True, defaultdict(list)
    try:
        yield _STATE["records"]
    finally:
        _STATE["active"] = False


@torch.no_grad()
def record_input(name: str, x2d: torch.Tensor, reconstruction: torch.Tensor, clamped_entries: int) -> None:
    """Add one record for layer ``name``: x2d the true input, reconstruction what the GEMM used."""
    x = x2d.float()
    error = (x - reconstruction).pow(2).sum()
    signal = x.pow(2).sum()
    _STATE["records"][name].append(
        {
            "clamp_fraction": clamped_entries / max(1, x.numel()),
            "flushed_to_zero": ((reconstruction == 0) & (x != 0)).float().mean().item(),
            "snr_db": (10 * torch.log10(signal / error.clamp_min(1e-30))).item(),
        }
    )


def summarize(records: dict) -> dict[str, dict[str, float]]:
    """Mean of each statistic per layer (over micro-batches)."""
    return {
        layer: {key: sum(r[key] for r in entries) / len(entries) for key in entries[0]}
        for layer, entries in records.items()
        if entries
    }
