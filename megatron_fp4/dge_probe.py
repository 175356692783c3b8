"""Does DGE change the step the optimizer takes per weight? (issue 17's mechanism study)

DGE multiplies each weight's gradient by f'(W/s), between ~0.1 (a weight on an FP4 grid point)
and the clamp (3, between grid points). Adam divides by a running gradient magnitude, so a factor
that stays put for a weight cancels; a factor that moves with the weight does not. Whether the
update Adam finally applies follows f' is measured here, around one optimizer step at health
intervals: before the step a fixed sample of each FP4 linear's weights (``SAMPLE`` per layer,
fixed positions, drawn with replacement), their values and the factor f' DGE evaluates for them
(the one it would evaluate, for runs without DGE: the baseline); after it, the actual update
|ΔW| at those positions, recorded by ``health.record_dge_update`` (its docstring says which
statistics).

The sample costs a few hundred kilobytes per layer, not a copy of the weights.
"""

from __future__ import annotations

import zlib

import torch

from . import health
from .dge import dge_derivative
from .formats import E2M1
from .recipe import DGEConfig, FP4Recipe
from .scaling import absmax_scale

__all__ = ["UpdateProbe", "probes_for_model", "SAMPLE"]

SAMPLE = 1 << 16


class UpdateProbe:
    """One layer's sample: ``before()`` ahead of the optimizer step, ``record()`` after it."""

    def __init__(self, name: str, weight: torch.Tensor, recipe: FP4Recipe, sample: int = SAMPLE) -> None:
        self.name, self.weight = name, weight
        self.dge = recipe.dge if recipe.dge.enabled else DGEConfig()
        self.fmt = recipe.fprop_weight.format if recipe.fprop_weight.dtype == "fp4" else E2M1  # bf16_dge models E2M1
        count = weight.numel()
        generator = torch.Generator(device="cpu").manual_seed(zlib.crc32(name.encode()))  # the same positions every time
        positions = torch.randint(0, count, (sample,), generator=generator) if count > sample else torch.arange(count)
        self.positions = positions.to(weight.device)
        self.values = self.factor = None

    @torch.no_grad()
    def before(self) -> None:
        w = self.weight.detach()
        scale = absmax_scale(w.float().abs().amax(dim=-1, keepdim=True), self.fmt.max_value)  # the forward's row scale s_W
        rows = self.positions // w.shape[-1]
        self.values = w.reshape(-1)[self.positions].float()
        self.factor = dge_derivative(self.values / scale.reshape(-1)[rows], self.fmt, self.dge.k, self.dge.max_derivative)

    @torch.no_grad()
    def record(self) -> None:
        update = (self.weight.detach().reshape(-1)[self.positions].float() - self.values).abs()
        health.record_dge_update(self.name, self.factor, update)
        self.values = self.factor = None


def probes_for_model(model) -> list[UpdateProbe]:
    """A probe for every FP4 linear of ``model`` (megatron-fp4 layers: ``fp4_recipe``, ``fp4_name``)
    whose recipe changes the linear and has an FP4 or DGE-modelled weight."""
    modules = model if isinstance(model, (list, tuple)) else [model]
    probes = []
    for chunk in modules:
        for module in chunk.modules():
            recipe = getattr(module, "fp4_recipe", None)
            if recipe is not None and recipe.changes_linear and getattr(module, "weight", None) is not None:
                probes.append(UpdateProbe(getattr(module, "fp4_name", type(module).__name__), module.weight, recipe))
    return probes
