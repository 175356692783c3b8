"""FP4Recipe: per GEMM (fprop, dgrad, wgrad) and per operand, which format is used, plus DGE/OCC.

A linear layer runs three GEMMs:
    fprop  Y  = X  @ W^T     operands: input X,        weight W
    dgrad  dX = dY @ W       operands: grad_output dY, weight W
    wgrad  dW = dY^T @ X     operands: grad_output dY, input X

The `paper` preset follows Wang et al. 2025 (§3, §4 and Appendix; FP8-LM lineage): FP4 E2M1
weights (per output channel) and activations (per token) in every GEMM, DGE on the weights
(k = 5, derivative clamped at 3.0), OCC on the activations (α = 0.99, every clamped entry
compensated; by default inline, as E4M3 values inside the FP8 activation operand, or through
a separate FP8 or exact residual GEMM on request: ``megatron_fp4.occ``),
and the output gradient in FP8 E5M2 for dgrad and wgrad, which multiply it with the same
FP4-valued weight and activation as the forward GEMM. Everything outside the linear GEMMs
(embeddings, LM head, attention math, norms, residual stream, loss, master weights and optimizer)
stays in high precision; those belong to the layers and the trainer, not to this recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .occ import OCCConfig
from .quantize import QuantSpec

__all__ = ["DGEConfig", "OCCConfig", "FP4Recipe", "RECIPES", "get_recipe"]


def _compensation_text(occ: OCCConfig) -> str:
    if not occ.compensate:
        return "clamp only"
    where = "" if occ.compensate_wgrad else ", forward only"
    if occ.compensation == "hot_channels":
        return f"compensated in the hottest {occ.hot_channel_fraction:.3g} of channels{where}"
    if occ.compensation == "fp8":
        return f"compensated in FP8 (E4M3 residual and weight){where}"
    if occ.compensation == "inline":
        return "compensated inline (clamped entries as E4M3 in the FP8 operand)"
    return f"compensated exactly{where}"

FP4_ROW = QuantSpec("fp4", "row")
FP8_E5M2_TENSOR = QuantSpec("fp8_e5m2", "tensor")
BF16 = QuantSpec("bf16", "tensor")
OPERANDS = ("fprop_input", "fprop_weight", "dgrad_grad_output", "dgrad_weight", "wgrad_grad_output", "wgrad_input")


@dataclass(frozen=True)
class DGEConfig:
    """Differentiable gradient estimator settings (paper §3.1): k and the derivative's clamp."""

    enabled: bool = True
    k: float = 5.0
    max_derivative: float = 3.0

    def __post_init__(self) -> None:
        if not self.k >= 1.0:
            raise ValueError(f"DGEConfig.k={self.k}; must be >= 1 (k=1 is the straight-through estimator)")
        if not self.max_derivative >= 1.0:
            raise ValueError(f"DGEConfig.max_derivative={self.max_derivative}; must be >= 1")


GRAD_AMAX_CHOICES = ("current", "delayed")
MAX_AMAX_MARGIN = 8  # binades of delayed-scaling headroom: beyond ~8, E5M2's low end would lose real values


@dataclass(frozen=True)
class FP4Recipe:
    """Formats of the six GEMM operands of a linear layer, plus DGE and OCC settings.

    Saved-for-backward rule: the layer saves the operands in the formats dgrad and wgrad ask for,
    so with the presets it keeps the packed FP4 weight and activation of the forward GEMM, never
    a full-precision copy. fold_backward_scales: move the weight's and the activation's row
    scales into the output gradient before its quantization, so dgrad and wgrad run on FP8
    tensor cores (``megatron_fp4.backward``); False keeps Q_g(dY)·Q(W) (reference GEMMs only).
    check_finite: raise on NaN/Inf in any tensor being quantized (debug).
    wgrad_along_tokens: quantize both weight-gradient operands along that GEMM's reduction
    dimension, the tokens (dY^T and X^T, blocks along M), as a block-scaled FP4 wgrad GEMM needs;
    False quantizes them as laid out (dY along N, X along K). wgrad_hadamard: the random Hadamard
    transform (``megatron_fp4.hadamard``) on both, with sign seed ``hadamard_seed``.
    grad_amax: how the output gradient's FP8 tensor scales are found: ``current`` (this gradient's
    maximum: dY is read twice) or ``delayed`` (the previous backward's maximum, per layer, falling
    back to the current one wherever the gradient would saturate or is not finite: dY is read once;
    ``backward.quantize_grad_output_delayed_reference``). FP8 tensor output-gradient specs only.
    grad_amax_margin: delayed scaling's headroom in binades (Megatron's ``--fp8-margin`` idea):
    the history's scale serves any maximum up to the history times 2^margin, so a gradient that
    grows a little from one step to the next (most steps) does not fall back and read dY again;
    each binade costs precision only below the FP8 format's smallest normal. Ignored by ``current``.
    """

    name: str = "custom"
    fprop_input: QuantSpec = FP4_ROW
    fprop_weight: QuantSpec = FP4_ROW
    dgrad_grad_output: QuantSpec = FP8_E5M2_TENSOR
    dgrad_weight: QuantSpec = FP4_ROW
    wgrad_grad_output: QuantSpec = FP8_E5M2_TENSOR
    wgrad_input: QuantSpec = FP4_ROW
    dge: DGEConfig = field(default_factory=DGEConfig)
    occ: OCCConfig = field(default_factory=OCCConfig)
    fold_backward_scales: bool = True
    check_finite: bool = False
    wgrad_along_tokens: bool = False
    wgrad_hadamard: bool = False
    hadamard_seed: int | None = 0
    grad_amax: str = "current"
    grad_amax_margin: int = 1

    def __post_init__(self) -> None:
        if self.grad_amax not in GRAD_AMAX_CHOICES:
            raise ValueError(f"FP4Recipe.grad_amax={self.grad_amax!r} (--fp4-grad-amax); allowed: {list(GRAD_AMAX_CHOICES)}")
        if not (isinstance(self.grad_amax_margin, int) and not isinstance(self.grad_amax_margin, bool) and 0 <= self.grad_amax_margin <= MAX_AMAX_MARGIN):
            raise ValueError(f"FP4Recipe.grad_amax_margin={self.grad_amax_margin!r} (--fp4-grad-amax-margin); allowed: integers 0 to {MAX_AMAX_MARGIN}")
        if self.grad_amax == "delayed" and not all(
            spec.dtype.startswith("fp8") and spec.granularity == "tensor" for spec in (self.dgrad_grad_output, self.wgrad_grad_output)
        ):
            raise ValueError(
                f"FP4Recipe.grad_amax='delayed' (--fp4-grad-amax delayed) needs FP8 tensor-scaled output gradients, got "
                f"dgrad_grad_output={self.dgrad_grad_output.describe()} wgrad_grad_output={self.wgrad_grad_output.describe()}"
            )
        if self.wgrad_hadamard and not self.wgrad_along_tokens:
            raise ValueError("FP4Recipe.wgrad_hadamard=True needs wgrad_along_tokens=True (the transform runs along the tokens)")
        if self.wgrad_along_tokens and not (self.wgrad_input.is_quantized and self.wgrad_grad_output.is_quantized):
            raise ValueError("FP4Recipe.wgrad_along_tokens=True needs quantized wgrad_input and wgrad_grad_output")
        for operand in OPERANDS:
            if not isinstance(getattr(self, operand), QuantSpec):
                raise ValueError(f"FP4Recipe.{operand} must be a QuantSpec, got {getattr(self, operand)!r}")
        if self.dge.enabled and self.fprop_weight.dtype != "fp4" and self.quantizes:
            raise ValueError(
                f"FP4Recipe.dge.enabled=True needs fprop_weight.dtype='fp4' (DGE models the FP4 grid), got "
                f"{self.fprop_weight.dtype!r} (DGE on a recipe that quantizes nothing is the `bf16_dge` ablation)"
            )
        if self.occ.enabled and not self.fprop_input.is_quantized:
            raise ValueError(
                f"FP4Recipe.occ.enabled=True needs a quantized fprop_input, got {self.fprop_input.dtype!r}"
            )

        if self.occ.inline and not (self.fprop_input == FP4_ROW and self.wgrad_input == self.fprop_input):
            raise ValueError(
                "FP4Recipe.occ.compensation='inline' (--fp4-occ-compensation inline) needs fprop_input and wgrad_input "
                f"both {FP4_ROW.describe()} (the E4M3 outliers ride in that operand), got fprop_input="
                f"{self.fprop_input.describe()} wgrad_input={self.wgrad_input.describe()}"
            )

    @property
    def quantizes(self) -> bool:
        """False when every operand is high precision (the `bf16` and `bf16_dge` presets)."""
        return any(getattr(self, operand).is_quantized for operand in OPERANDS)

    @property
    def changes_linear(self) -> bool:
        """False only for the `bf16` preset (nothing quantized, no DGE): then plain F.linear runs."""
        return self.quantizes or self.dge.enabled

    def replace(self, **changes) -> "FP4Recipe":
        """A copy with fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        ops = ", ".join(f"{operand}={getattr(self, operand).describe()}" for operand in OPERANDS)
        dge = f"DGE(k={self.dge.k:g}, max={self.dge.max_derivative:g})" if self.dge.enabled else "STE"
        occ = self.occ
        occ_text = (
            f"OCC(alpha={occ.alpha:g}, {_compensation_text(occ)}, {occ.scope})"
            if occ.enabled
            else "no OCC"
        )
        fold = "backward scales folded into dY" if self.fold_backward_scales else "backward scales unfolded"
        if self.wgrad_along_tokens:
            fold = "wgrad operands quantized along the tokens" + (f" after a 16x16 RHT (sign seed {self.hadamard_seed})" if self.wgrad_hadamard else "")
        amax = f"; delayed output-gradient scales (margin {self.grad_amax_margin})" if self.grad_amax == "delayed" else ""
        return f"{self.name}: {ops}; {dge}; {occ_text}; {fold}{amax}"

    # ---- presets -------------------------------------------------------------------------
    @classmethod
    def paper(cls, **changes) -> "FP4Recipe":
        """Wang et al. 2025: FP4 vector-wise W/A, FP8 E5M2 output gradient, DGE k=5, OCC α=0.99."""
        return cls(name="paper").replace(**changes)

    @classmethod
    def direct(cls, **changes) -> "FP4Recipe":
        """Plain FP4 cast of W and A (vector-wise), straight-through gradients: the failing baseline."""
        return cls(name="direct", dge=DGEConfig(enabled=False), occ=OCCConfig(enabled=False)).replace(**changes)

    @classmethod
    def nvfp4(cls, **changes) -> "FP4Recipe":
        """NVIDIA's NVFP4 training recipe (arXiv 2509.25149; Transformer Engine's NVFP4BlockScaling):
        E2M1 in 16-blocks with E4M3 block scales and an fp32 tensor scale for activations and
        gradients, 16x16 tiles for weights (W and W^T alike), stochastic rounding on gradients,
        round-to-nearest elsewhere, a 16x16 random Hadamard transform on both wgrad inputs
        (quantized along the tokens); straight-through gradients, no OCC."""
        block, tile = QuantSpec("fp4", "nvfp4"), QuantSpec("fp4", "nvfp4_2d")
        gradient = QuantSpec("fp4", "nvfp4", stochastic_rounding=True)
        return cls(
            name="nvfp4",
            fprop_input=block,
            fprop_weight=tile,
            dgrad_grad_output=gradient,
            dgrad_weight=tile,
            wgrad_grad_output=gradient,
            wgrad_input=block,
            dge=DGEConfig(enabled=False),
            occ=OCCConfig(enabled=False),
            wgrad_along_tokens=True,
            wgrad_hadamard=True,
        ).replace(**changes)

    @classmethod
    def mxfp4(cls, **changes) -> "FP4Recipe":
        """OCP MXFP4 (MX v1.0: 32-blocks, E8M0 power-of-two scales) for all six operands, wgrad
        operands along the tokens; round-to-nearest and no RHT unless switched on; STE, no OCC."""
        block = QuantSpec("fp4", "mxfp4")
        return cls(
            name="mxfp4",
            fprop_input=block,
            fprop_weight=block,
            dgrad_grad_output=block,
            dgrad_weight=block,
            wgrad_grad_output=block,
            wgrad_input=block,
            dge=DGEConfig(enabled=False),
            occ=OCCConfig(enabled=False),
            wgrad_along_tokens=True,
        ).replace(**changes)

    @classmethod
    def bf16_dge(cls, **changes) -> "FP4Recipe":
        """Ablation (issue 17's mechanism study): BF16 GEMMs, but the weight gradient multiplied by
        the DGE factor f'(W / s_W) that `paper` applies, with s_W = the per-channel FP4 scale
        amax / 6 W would have. Separates DGE's effect on the update from FP4's forward."""
        return cls(name="bf16_dge", **{operand: BF16 for operand in OPERANDS}, occ=OCCConfig(enabled=False)).replace(**changes)

    @classmethod
    def bf16(cls, **changes) -> "FP4Recipe":
        """No quantization at all, for A/B runs: the layer is exactly nn.Linear."""
        return cls(
            name="bf16",
            **{operand: BF16 for operand in OPERANDS},
            dge=DGEConfig(enabled=False),
            occ=OCCConfig(enabled=False),
        ).replace(**changes)


RECIPES = {
    "paper": FP4Recipe.paper, "direct": FP4Recipe.direct, "nvfp4": FP4Recipe.nvfp4, "mxfp4": FP4Recipe.mxfp4,
    "bf16": FP4Recipe.bf16, "bf16_dge": FP4Recipe.bf16_dge,
}


def get_recipe(name: str, **changes) -> FP4Recipe:
    """A preset by name (``paper``, ``direct``, ``nvfp4``, ``mxfp4``, ``bf16``, ``bf16_dge``), optionally changed."""
    try:
        preset = RECIPES[name]
    except KeyError:
        raise ValueError(f"unknown FP4 recipe {name!r}; allowed: {sorted(RECIPES)}") from None
    return preset(**changes)
