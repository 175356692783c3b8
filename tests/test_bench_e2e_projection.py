"""bench_e2e's depth projection: the marginal layer cost is the slope of step time over depth."""

import importlib.util
import pathlib

import pytest

_SPEC = importlib.util.spec_from_file_location("bench_e2e", pathlib.Path(__file__).parents[1] / "benchmarks" / "bench_e2e.py")
bench_e2e = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(bench_e2e)


def _row(recipe, layers, fixed, per_layer):
    return {"shape": "7B", "seq": 2048, "attention": "flash", "recipe": recipe, "layers": layers, "wall_ms": fixed + layers * per_layer}


def test_slope_intercept_and_projection_from_synthetic_steps():
    results = [_row(recipe, layers, fixed, per) for recipe, fixed, per in (("bf16", 100.0, 60.0), ("direct", 110.0, 40.0))
               for layers in (2, 4, 6)]
    rows = {r["recipe"]: r for r in bench_e2e.marginal_layer_rows(results)}
    assert rows["direct"]["layer_ms"] == pytest.approx(40.0) and rows["direct"]["fixed_ms"] == pytest.approx(110.0)
    assert rows["direct"]["layer_ratio"] == pytest.approx(1.5)
    assert rows["direct"]["depth"] == 32  # LLaMA-2 7B
    assert rows["direct"]["projected_ratio"] == pytest.approx((100 + 32 * 60) / (110 + 32 * 40))
    assert rows["bf16"]["projected_ratio"] == pytest.approx(1.0)


def test_one_depth_gives_no_row_and_a_missing_baseline_gives_nan():
    assert bench_e2e.marginal_layer_rows([_row("bf16", 2, 100.0, 60.0)]) == []
    rows = bench_e2e.marginal_layer_rows([_row("paper", 2, 100.0, 60.0), _row("paper", 4, 100.0, 60.0)], project_layers=8)
    assert rows[0]["depth"] == 8 and rows[0]["layer_ratio"] != rows[0]["layer_ratio"]  # NaN


def test_every_benchmark_row_is_a_command_line_the_trainer_accepts(monkeypatch):
    """Each recipe row (eager and -graph) parses with the trainer's own checks (the GPU check
    stubbed: CI has none), so a benchmark never measures a silently different configuration."""
    import torch

    from megatron_fp4.training import cuda_graphs
    from megatron_fp4.training.arguments import parse_args

    from megatron.core.models.common.embeddings import rope_utils

    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", rope_utils.fused_apply_rotary_pos_emb)  # the rows install ours: restored afterwards
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for recipe in bench_e2e.RECIPE_FLAGS:
        args = parse_args(bench_e2e.trainer_flags("1.3B", 2048, 2, 4, 4, recipe, "flash", 32000))
        unfused = recipe.endswith("-unfused")
        base = recipe.removesuffix("-unfused").removesuffix("-nofq").removesuffix("-delayed-m0").removesuffix("-delayed")
        # "-nofq": the SwiGLU written out for fc2's quantizer; "-delayed": delayed output-gradient
        # scales with the default headroom, "-delayed-m0" without
        assert args.fp4_quantize_fusion == (not recipe.endswith("-nofq")), recipe
        if args.fp4_quant_recipe is not None:
            delayed = recipe.endswith(("-delayed", "-delayed-m0"))
            assert (args.fp4_quant_recipe.grad_amax == "delayed") == delayed, recipe
            assert args.fp4_quant_recipe.grad_amax_margin == (0 if recipe.endswith("-m0") else 1), recipe
        assert cuda_graphs.enabled(args) == base.endswith("-graph"), recipe
        assert (args.fp4_quant_recipe is not None) == (base not in ("bf16", "bf16-graph")), recipe
        # fused rows: the trainer's fusions plus the fused loss; "-unfused" rows: none of them
        assert (args.bias_swiglu_fusion, args.apply_rope_fusion, args.cross_entropy_loss_fusion) == ((False,) * 3 if unfused else (True,) * 3), recipe
