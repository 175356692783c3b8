"""Quantization fidelity: how close a quantized activation stays to the original (paper §3.2).

Metrics between a tensor A and its reconstruction Â: cosine similarity, mean squared error and
signal-to-noise ratio SNR = 10·log10(‖A‖² / ‖A − Â‖²) dB. ``activation_ablation`` reproduces the
paper's OCC table: direct cast, clamp only, and clamp + compensation for several α.
``gemm_output_ablation`` measures what training sees, the linear layer's output Y = A W^T with
its FP4 weight, for each OCC compensation (the ``inline`` one multiplies the clamped entries by
Q(W) instead of W, a difference only the output shows).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .occ import (
    OCCConfig, occ_bounds, occ_clamp, occ_fp8_residual, occ_hot_channel_residual, occ_residual, quantize_with_inline_outliers_reference,
)
from .quantize import QuantSpec, fake_quantize

__all__ = ["FidelityRow", "fidelity_metrics", "activation_ablation", "gemm_output_ablation", "synthetic_llm_activation", "format_table"]


@dataclass(frozen=True)
class FidelityRow:
    method: str
    alpha: float | None
    cosine: float
    mse: float
    snr_db: float
    clamp_fraction: float


def fidelity_metrics(reference: torch.Tensor, approximation: torch.Tensor) -> tuple[float, float, float]:
    """(cosine similarity, MSE, SNR in dB) of ``approximation`` against ``reference`` (fp64 math)."""
    ref, approx = reference.double().flatten(), approximation.double().flatten()
    error = ref - approx
    cosine = torch.nn.functional.cosine_similarity(ref, approx, dim=0).item()
    mse = error.pow(2).mean().item()
    noise = error.pow(2).sum().item()
    snr = float("inf") if noise == 0 else 10 * torch.log10(ref.pow(2).sum() / noise).item()
    return cosine, mse, snr


def activation_ablation(
    activation: torch.Tensor,
    alphas: tuple[float, ...] = (0.999, 0.99, 0.97),
    spec: QuantSpec = QuantSpec("fp4", "row"),
    occ: OCCConfig = OCCConfig(),
) -> list[FidelityRow]:
    """Fidelity of direct FP4 cast, clamp-only, clamp + exact compensation, clamp + hot-channel
    compensation (``occ.hot_channel_fraction`` of the channels), clamp + FP8 compensation (the
    residual in E4M3, one scale per token) and clamp + inline compensation (the clamped entries as
    E4M3 in the operand; tensor-scope bounds) for each α."""
    x2d = activation.reshape(-1, activation.shape[-1])
    rows = [FidelityRow("direct cast", None, *fidelity_metrics(x2d, fake_quantize(x2d, spec).float()), 0.0)]
    for alpha in alphas:
        result = occ_clamp(x2d, OCCConfig(alpha=alpha, scope=occ.scope, symmetric=occ.symmetric))
        clamped_q = fake_quantize(result.clamped, spec).float()
        exact = result.residual.to_dense()
        low, high = occ_bounds(x2d, OCCConfig(alpha=alpha, scope=occ.scope, symmetric=occ.symmetric))
        hot = occ_hot_channel_residual(x2d, low, high, occ.hot_channel_fraction).to_dense()
        fraction = result.clamp_fraction
        rows.append(FidelityRow("clamp", alpha, *fidelity_metrics(x2d, clamped_q), fraction))
        rows.append(FidelityRow("clamp+comp", alpha, *fidelity_metrics(x2d, clamped_q + exact), fraction))
        rows.append(FidelityRow("clamp+hot", alpha, *fidelity_metrics(x2d, clamped_q + hot), fraction))
        fp8 = occ_fp8_residual(x2d, low, high).to_dense()
        rows.append(FidelityRow("clamp+fp8", alpha, *fidelity_metrics(x2d, clamped_q + fp8), fraction))
        inline = quantize_with_inline_outliers_reference(x2d, low, high).dequantize_2d()
        rows.append(FidelityRow("clamp+inline", alpha, *fidelity_metrics(x2d, inline), fraction))
    return rows


GEMM_OUTPUT_METHODS = {  # row label -> OCC settings of the `paper` recipe's forward
    "direct cast": OCCConfig(enabled=False),
    "clamp": OCCConfig(compensate=False),
    "clamp+comp": OCCConfig(compensation="exact"),
    "clamp+fp8": OCCConfig(compensation="fp8"),
    "clamp+inline": OCCConfig(compensation="inline"),
}


def gemm_output_ablation(activation: torch.Tensor, weight: torch.Tensor, alpha: float = 0.99) -> list[FidelityRow]:
    """Fidelity of the FP4 linear's output Q-forward(A, W) against A W^T (fp64) for each OCC
    compensation at ``alpha`` (`paper`'s FP4 weight and activation formats, the exact reference
    GEMM, so only the compensation differs between rows)."""
    from .gemm import get_backend
    from .linear import FP4GemmState
    from .recipe import FP4Recipe

    x2d = activation.reshape(-1, activation.shape[-1])
    exact = (x2d.double() @ weight.double().t())
    low, high = occ_bounds(x2d, OCCConfig(alpha=alpha))  # the same bounds for every clamping row
    clamped = float(((x2d > high) | (x2d < low)).float().mean())
    rows = []
    for method, occ in GEMM_OUTPUT_METHODS.items():
        occ = dataclasses.replace(occ, alpha=alpha)
        y = FP4GemmState(FP4Recipe.paper(occ=occ), get_backend("reference")).forward(x2d, weight.to(x2d.dtype))
        rows.append(FidelityRow(method, alpha if occ.enabled else None, *fidelity_metrics(exact, y), clamped if occ.enabled else 0.0))
    return rows


def hot_channel_energy_share(activation: torch.Tensor, occ: OCCConfig = OCCConfig()) -> float:
    """Share of the clamped residual's energy (sum of ΔA²) that hot-channel compensation keeps."""
    x2d = activation.reshape(-1, activation.shape[-1])
    low, high = occ_bounds(x2d, occ)
    total = occ_residual(x2d, low, high).values.double().square().sum()
    kept = occ_hot_channel_residual(x2d, low, high, occ.hot_channel_fraction).values.double().square().sum()
    return 1.0 if total == 0 else float(kept / total)


def synthetic_llm_activation(tokens: int = 4096, hidden: int = 2048, seed: int = 0) -> torch.Tensor:
    """An activation-like tensor: what LLM linear inputs look like to a quantizer.

    Heavy-tailed token values (Student-t, 3 dof), per-channel magnitudes that vary log-normally,
    a handful of persistent outlier channels ~4-8x larger, and rare isolated spikes.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        base = torch.distributions.StudentT(3.0).sample((tokens, hidden))
    base = base / base.std()
    channel_scale = torch.exp(0.5 * torch.randn(hidden, generator=g))
    outlier_channels = torch.randperm(hidden, generator=g)[: max(1, hidden // 256)]
    channel_scale[outlier_channels] *= 4 + 4 * torch.rand(outlier_channels.numel(), generator=g)
    spikes = (torch.rand(tokens, hidden, generator=g) < 1e-4) * 50 * torch.randn(tokens, hidden, generator=g)
    return (base * channel_scale + spikes).to(torch.bfloat16)


def format_table(rows: list[FidelityRow]) -> str:
    lines = [f"{'method':<12} {'alpha':>6} {'cos sim':>9} {'MSE':>10} {'SNR dB':>7} {'clamped':>8}"]
    for row in rows:
        alpha = "-" if row.alpha is None else f"{row.alpha:g}"
        lines.append(
            f"{row.method:<12} {alpha:>6} {row.cosine:>9.5f} {row.mse:>10.3e} {row.snr_db:>7.2f} {row.clamp_fraction:>8.2%}"
        )
    return "\n".join(lines)
