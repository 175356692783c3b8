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

__all__ = ["collecting", "is_collecting", "record_input", "summarize", "gather", "format_summary"]

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


def gather(records) -> dict[str, dict[str, float]]:
    """Per-layer health from every rank (pipeline stages hold different layers; TP ranks differ
    on row-parallel shards: their statistics are averaged). A collective: every rank calls it."""
    import torch.distributed as dist

    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, summarize(records))
    merged: dict[str, list[dict]] = {}
    for per_rank in gathered:
        for layer, stats in per_rank.items():
            merged.setdefault(layer, []).append(stats)
    return {layer: {k: sum(s[k] for s in entries) / len(entries) for k in entries[0]} for layer, entries in sorted(merged.items())}


def format_summary(stats: dict[str, dict[str, float]], iteration: int) -> str:
    """One log line: mean and worst layer of input SNR and underflow, mean OCC clamp share."""
    worst_snr = min(stats.items(), key=lambda item: item[1]["snr_db"])
    worst_flush = max(stats.items(), key=lambda item: item[1]["flushed_to_zero"])

    def mean(key: str) -> float:
        return sum(s[key] for s in stats.values()) / len(stats)

    return (
        f" fp4 health at iteration {iteration}: {len(stats)} layers | input SNR mean {mean('snr_db'):.1f} dB, "
        f"lowest {worst_snr[1]['snr_db']:.1f} dB ({worst_snr[0]}) | flushed to zero mean {mean('flushed_to_zero'):.2%}, "
        f"highest {worst_flush[1]['flushed_to_zero']:.2%} ({worst_flush[0]}) | OCC clamped {mean('clamp_fraction'):.2%}"
    )
