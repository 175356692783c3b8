import pytest

from megatron_fp4.quantize import QuantSpec
from megatron_fp4.recipe import RECIPES, DGEConfig, FP4Recipe, OCCConfig, get_recipe


def test_paper_preset_is_the_papers_scheme():
    r = FP4Recipe.paper()
    fp4_row = QuantSpec("fp4", "row", "e2m1")
    assert r.fprop_input == r.fprop_weight == r.dgrad_weight == r.wgrad_input == fp4_row
    assert r.dgrad_grad_output == r.wgrad_grad_output == QuantSpec("fp8_e5m2", "tensor")
    assert (r.dge.enabled, r.dge.k, r.dge.max_derivative) == (True, 5.0, 3.0)
    assert (r.occ.enabled, r.occ.alpha, r.occ.compensate) == (True, 0.99, True)


def test_presets_differ_where_they_should():
    direct = FP4Recipe.direct()
    assert not direct.dge.enabled and not direct.occ.enabled and direct.fprop_weight == FP4Recipe.paper().fprop_weight
    assert FP4Recipe.nvfp4().fprop_input.granularity == "nvfp4"
    assert FP4Recipe.mxfp4().wgrad_input.granularity == "mxfp4"
    assert not FP4Recipe.bf16().quantizes and FP4Recipe.paper().quantizes
    assert set(RECIPES) == {"paper", "direct", "nvfp4", "mxfp4", "bf16", "bf16_dge"}
    bf16_dge = FP4Recipe.bf16_dge()
    assert bf16_dge.dge.enabled and not bf16_dge.quantizes and bf16_dge.changes_linear and not FP4Recipe.bf16().changes_linear
    assert get_recipe("paper", occ=OCCConfig(alpha=0.97)).occ.alpha == 0.97
    assert "DGE(k=5" in FP4Recipe.paper().describe()


def test_recipes_are_frozen():
    with pytest.raises(AttributeError):
        FP4Recipe.paper().name = "x"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: FP4Recipe.paper(fprop_weight=QuantSpec("bf16", "tensor")), "dge.enabled=True needs fprop_weight"),
        (lambda: FP4Recipe.direct(fprop_input=QuantSpec("bf16"), occ=OCCConfig()), "occ.enabled=True needs a quantized"),
        (lambda: FP4Recipe.paper(fprop_input="fp4"), "FP4Recipe.fprop_input must be a QuantSpec"),
        (lambda: FP4Recipe.paper(dge=DGEConfig(k=0)), "DGEConfig.k=0"),
        (lambda: FP4Recipe.paper(occ=OCCConfig(alpha=2)), "OCCConfig.alpha=2"),
        (lambda: get_recipe("fp2"), "unknown FP4 recipe 'fp2'"),
    ],
)
def test_bad_combinations_raise_naming_the_field(build, message):
    with pytest.raises(ValueError, match=message):
        build()
