"""FP4 health telemetry: the input statistics and, for recipes with DGE, how the DGE factor
reshapes each weight gradient (issue 17's mechanism study), recomputed here from the definitions."""

import torch

from megatron_fp4 import health
from megatron_fp4.dge import dge_derivative
from megatron_fp4.linear import fp4_linear
from megatron_fp4.recipe import FP4Recipe


def test_dge_statistics_are_recorded_at_health_intervals():
    x = torch.randn(64, 128)
    w = (torch.randn(32, 128) * 0.05).requires_grad_()
    g = torch.randn(64, 32)
    with health.collecting() as records:
        fp4_linear(x, w, None, FP4Recipe.paper()).backward(g)
    summary = health.summarize(records)
    dge = summary["linear" + health.DGE_SUFFIX]
    factor = dge_derivative(w.detach() / (w.detach().abs().amax(dim=1, keepdim=True) / 6))
    assert abs(dge["dge_factor_mean"] - factor.mean().item()) < 1e-5
    assert 0 <= dge["dge_at_clamp"] <= 1 and 0 < dge["dge_below_one"] < 1
    assert dge["dge_update_norm_ratio"] > 0
    line = health.format_summary(summary, 7)
    assert "DGE factor mean" in line and "input SNR" in line


def test_no_dge_records_without_dge_or_outside_intervals():
    x = torch.randn(64, 128)
    w = (torch.randn(32, 128) * 0.05).requires_grad_()
    with health.collecting() as records:
        fp4_linear(x, w, None, FP4Recipe.direct()).sum().backward()
    assert not any(name.endswith(health.DGE_SUFFIX) for name in records)
    fp4_linear(x, w, None, FP4Recipe.paper()).sum().backward()  # not collecting: nothing recorded, no error
    assert "DGE" not in health.format_summary(health.summarize(records), 1)


def test_update_statistics_are_the_stated_definitions():
    factor = torch.tensor([0.2, 0.5, 1.5, 3.0, 0.3, 2.0])
    update = torch.tensor([1.0, 1.0, 2.0, 4.0, 1.0, 3.0])
    with health.collecting() as records:
        health.record_dge_update("layer", factor, update)
    stats = records["layer" + health.UPDATE_SUFFIX][0]
    expected_corr = torch.corrcoef(torch.stack([factor, update]))[0, 1].item()
    assert abs(stats["update_factor_corr"] - expected_corr) < 1e-6
    assert abs(stats["update_ratio_high_low"] - (3.0 / 1.0)) < 1e-6
    with health.collecting() as records:
        health.record_dge_update("layer", torch.full((4,), 2.0), torch.rand(4))
    assert records["layer" + health.UPDATE_SUFFIX][0]["update_ratio_high_low"] != records["layer" + health.UPDATE_SUFFIX][0]["update_ratio_high_low"]  # NaN: no f' < 1
