"""megatron_fp4.dge_probe: the optimizer's step against the DGE factor on a fixed weight sample."""

import torch

from megatron_fp4 import health
from megatron_fp4.dge import dge_derivative
from megatron_fp4.recipe import FP4Recipe


def test_update_probe_sees_whether_the_step_follows_the_dge_factor():
    """An optimizer step proportional to f' (what plain SGD does with DGE) correlates with it; a
    sign step of uniform size (Adam with a settled second moment, no DGE) does not."""
    from megatron_fp4.dge_probe import UpdateProbe

    for follows in (True, False):
        w = torch.nn.Parameter(torch.randn(64, 256) * 0.05)
        probe = UpdateProbe("layer", w, FP4Recipe.paper(), sample=4096)
        probe.before()
        scale = w.detach().abs().amax(dim=1, keepdim=True) / 6
        factor = dge_derivative(w.detach() / scale)
        with torch.no_grad():
            w -= 1e-4 * torch.sign(torch.randn_like(w)) * (factor if follows else 1.0)
        with health.collecting() as records:
            probe.record()
        stats = records["layer" + health.UPDATE_SUFFIX][0]
        if follows:
            assert stats["update_factor_corr"] > 0.95 and stats["update_ratio_high_low"] > 2
        else:
            assert abs(stats["update_factor_corr"]) < 0.1 and abs(stats["update_ratio_high_low"] - 1) < 0.05
    line = health.format_summary(health.summarize(records), 3)
    assert "optimizer step vs DGE factor: corr" in line
