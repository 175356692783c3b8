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

__all__ = ["collecting", "is_collecting", "record_input", "record_weight_gradient", "record_dge_update", "summarize", "gather", "format_summary"]

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


DGE_SUFFIX = " (DGE)"


@torch.no_grad()
def record_weight_gradient(name: str, grad_w: torch.Tensor, factor: torch.Tensor, max_derivative: float) -> None:
    """Add one DGE record for layer ``name``: grad_w the weight gradient before DGE, factor f'(W/s).

    dge_factor_mean: mean of f' over the weights; dge_factor_grad_weighted: sum |g| f' / sum |g|;
    dge_update_norm_ratio: ||g f'|| / ||g|| (how DGE rescales the gradient an optimizer sees);
    dge_at_clamp / dge_below_one: share of weights whose factor is clamped at the maximum (near
    an interval midpoint) / damps the gradient (near a grid point). For issue 17's mechanism study."""
    g = grad_w.detach().float().abs()
    f = factor.float()
    _STATE["records"][name + DGE_SUFFIX].append(
        {
            "dge_factor_mean": f.mean().item(),
            "dge_factor_grad_weighted": ((g * f).sum() / g.sum().clamp_min(1e-30)).item(),
            "dge_update_norm_ratio": ((g * f).norm() / g.norm().clamp_min(1e-30)).item(),
            "dge_at_clamp": (f >= max_derivative).float().mean().item(),
            "dge_below_one": (f < 1).float().mean().item(),
        }
    )


UPDATE_SUFFIX = " (DGE update)"


@torch.no_grad()
def record_dge_update(name: str, factor: torch.Tensor, update: torch.Tensor) -> None:
    """Add one record for layer ``name`` from a sample of its weights: ``factor`` f'(W/s) before an
    optimizer step and ``update`` |ΔW| of that step (``megatron_fp4.dge_probe``).

    update_factor_corr: Pearson correlation of f' and |ΔW|; update_ratio_high_low: mean |ΔW| where
    f' >= 1 over mean |ΔW| where f' < 1 (1: the step does not depend on where a weight sits in its
    FP4 interval; NaN when one side is empty)."""
    f, step = factor.float(), update.float()
    high, low = f >= 1, f < 1
    ratio = (step[high].mean() / step[low].mean().clamp_min(1e-30)).item() if high.any() and low.any() else float("nan")
    centred_f, centred_s = f - f.mean(), step - step.mean()
    corr = ((centred_f * centred_s).sum() / (centred_f.norm() * centred_s.norm()).clamp_min(1e-30)).item()
    _STATE["records"][name + UPDATE_SUFFIX].append({"update_factor_corr": corr, "update_ratio_high_low": ratio})


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
    """One log line: mean and worst layer of input SNR and underflow, mean OCC clamp share, and
    (recipes with DGE) the mean DGE factors."""
    inputs = {layer: values for layer, values in stats.items() if "snr_db" in values}
    gradients = [values for values in stats.values() if "dge_factor_mean" in values]
    line = f" fp4 health at iteration {iteration}: {len(inputs) or len(gradients)} layers"
    if inputs:
        worst_snr = min(inputs.items(), key=lambda item: item[1]["snr_db"])
        worst_flush = max(inputs.items(), key=lambda item: item[1]["flushed_to_zero"])

        def mean(key: str) -> float:
            return sum(s[key] for s in inputs.values()) / len(inputs)

        line += (
            f" | input SNR mean {mean('snr_db'):.1f} dB, "
            f"lowest {worst_snr[1]['snr_db']:.1f} dB ({worst_snr[0]}) | flushed to zero mean {mean('flushed_to_zero'):.2%}, "
            f"highest {worst_flush[1]['flushed_to_zero']:.2%} ({worst_flush[0]}) | OCC clamped {mean('clamp_fraction'):.2%}"
        )
    if gradients:
        def dge_mean(key: str) -> float:
            return sum(s[key] for s in gradients) / len(gradients)

        line += (
            f" | DGE factor mean {dge_mean('dge_factor_mean'):.3f}, |g|-weighted {dge_mean('dge_factor_grad_weighted'):.3f}, "
            f"update norm x{dge_mean('dge_update_norm_ratio'):.3f}, at clamp {dge_mean('dge_at_clamp'):.2%}"
        )
    updates = [values for values in stats.values() if "update_factor_corr" in values]
    if updates:
        def update_mean(key: str) -> float:
            present = [s[key] for s in updates if s[key] == s[key]]  # NaN: a layer with one side empty
            return sum(present) / len(present) if present else float("nan")

        line += (
            f" | optimizer step vs DGE factor: corr {update_mean('update_factor_corr'):+.3f}, "
            f"|dW| f'>=1 / f'<1 x{update_mean('update_ratio_high_low'):.3f}"
        )
    return line
