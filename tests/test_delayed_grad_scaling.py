"""Delayed output-gradient scaling (``FP4Recipe.grad_amax="delayed"``, ``--fp4-grad-amax``): the
recipe and flag, the layer's state, and the FP4 linear's backward with it. (The fused kernel
against its reference, bit for bit: tests/kernel_tests/test_backward_kernels.py.)"""

import pytest
import torch

from conftest import relative_error, requires_cuda
from megatron_fp4.backward import delayed_fallback_rate, new_grad_amax_state, quantize_grad_output_delayed_reference, quantize_grad_output_reference
from megatron_fp4.linear import FP4Linear
from megatron_fp4.quantize import QuantSpec
from megatron_fp4.recipe import FP4Recipe, get_recipe
from megatron_fp4.training.checkpointing import recipe_record

E5M2 = QuantSpec("fp8_e5m2", "tensor")


def test_recipe_validation_names_the_flag():
    assert FP4Recipe.paper(grad_amax="delayed").grad_amax == "delayed"
    with pytest.raises(ValueError, match="--fp4-grad-amax delayed.*FP8 tensor-scaled"):
        get_recipe("nvfp4").replace(grad_amax="delayed")
    with pytest.raises(ValueError, match="allowed: \\['current', 'delayed'\\]"):
        FP4Recipe.paper(grad_amax="sometimes")


def test_flag_sets_the_recipe():
    from megatron_fp4.training.arguments import parse_args

    base = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --max-position-embeddings 32 --micro-batch-size 1 --global-batch-size 1 --train-iters 1 --lr 1e-3 --mock-data --vocab-size 128 --fp4".split()
    assert parse_args(base + ["--fp4-grad-amax", "delayed"]).fp4_quant_recipe.grad_amax == "delayed"
    assert parse_args(base).fp4_quant_recipe.grad_amax == "current"


def test_checkpoint_record_of_the_default_matches_earlier_versions():
    """Records written before the field existed hold no ``grad_amax``: the default is left out so
    they still match (and resume); the delayed setting is recorded."""
    assert "grad_amax" not in recipe_record(FP4Recipe.paper())["recipe"]
    assert recipe_record(FP4Recipe.paper(grad_amax="delayed"))["recipe"]["grad_amax"] == "delayed"


def test_reference_first_call_is_current_scaling_then_uses_the_history():
    g = torch.randn(64, 48).to(torch.bfloat16)
    weight_scale, input_scale = torch.rand(48) + 0.1, torch.rand(64) + 0.1
    history = new_grad_amax_state()
    current = quantize_grad_output_reference(g, E5M2, E5M2, weight_scale, input_scale)
    delayed = quantize_grad_output_delayed_reference(g, E5M2, E5M2, weight_scale, input_scale, history)
    for a, b in zip(delayed, current):  # empty history: the current scales, the same bytes
        assert torch.equal(a.scale, b.scale) and torch.equal(a.data.view(torch.uint8), b.data.view(torch.uint8))
    folded = g.float()
    assert torch.equal(history[:2], torch.stack([(folded * weight_scale).abs().amax(), (folded * input_scale[:, None]).abs().amax()]))
    smaller = quantize_grad_output_delayed_reference(g * 0.5, E5M2, E5M2, weight_scale, input_scale, history)
    assert all(torch.equal(a.scale, b.scale) for a, b in zip(smaller, current))  # the history's scales
    for a, b in zip(smaller, quantize_grad_output_reference(g * 0.5, E5M2, E5M2, weight_scale, input_scale)):
        # another scale, the same E5M2 grid relative to each value: dequantized within E5M2's rounding
        assert relative_error(a.dequantize(), b.dequantize()) < 0.1


def test_reference_margin_gives_headroom_and_counts_fallbacks():
    """With margin m the history's scale (history x 2^m / fp8_max) serves a gradient up to 2^m
    times the history's maximum; beyond it, or where history x 2^m overflows, the current scale;
    state[5] counts the calls that fell back."""
    fp8_max = torch.finfo(torch.float8_e5m2).max
    g = torch.randn(64, 48).to(torch.bfloat16)
    amax = g.float().abs().amax()
    for margin, growth, falls_back in ((1, 1.5, False), (1, 3.0, True), (0, 1.5, True), (2, 3.0, False)):
        state = new_grad_amax_state()
        quantize_grad_output_delayed_reference(g, E5M2, E5M2, None, None, state, amax_margin=margin)
        assert state[5] == 1 and state[0] == amax  # the first call: current scales, counted
        grown = (g.float() * growth).to(torch.bfloat16)
        dgrad, _ = quantize_grad_output_delayed_reference(grown, E5M2, E5M2, None, None, state, amax_margin=margin)
        expected = grown.float().abs().amax() / fp8_max if falls_back else amax * 2.0**margin / fp8_max
        assert torch.equal(dgrad.scale.reshape(()), expected), (margin, growth)
        assert state[5] == 1 + falls_back and state[6] == 2, (margin, growth)
    state = new_grad_amax_state()
    state[:2] = torch.finfo(torch.float32).max  # history x 2 overflows: never an inf scale
    dgrad, _ = quantize_grad_output_delayed_reference(g, E5M2, E5M2, None, None, state, amax_margin=1)
    assert torch.equal(dgrad.scale.reshape(()), amax / fp8_max) and state[5] == 1


def test_margin_recipe_flag_and_record(capsys):
    from megatron_fp4.training.arguments import parse_args

    assert FP4Recipe.paper(grad_amax="delayed").grad_amax_margin == 1
    with pytest.raises(ValueError, match=r"grad_amax_margin=9 \(--fp4-grad-amax-margin\); allowed: integers 0 to 8"):
        FP4Recipe.paper(grad_amax="delayed", grad_amax_margin=9)
    base = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --max-position-embeddings 32 --micro-batch-size 1 --global-batch-size 1 --train-iters 1 --lr 1e-3 --mock-data --vocab-size 128 --fp4".split()
    assert parse_args(base + ["--fp4-grad-amax", "delayed", "--fp4-grad-amax-margin", "0"]).fp4_quant_recipe.grad_amax_margin == 0
    with pytest.raises(SystemExit):
        parse_args(base + ["--fp4-grad-amax-margin", "2"])
    assert "--fp4-grad-amax-margin applies to --fp4-grad-amax delayed" in capsys.readouterr().err
    assert "grad_amax_margin" not in recipe_record(FP4Recipe.paper())["recipe"]  # current scaling: as before the field
    assert recipe_record(FP4Recipe.paper(grad_amax="delayed", grad_amax_margin=2))["recipe"]["grad_amax_margin"] == 2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=requires_cuda)])
def test_fp4_linear_keeps_and_uses_its_history(device):
    torch.manual_seed(0)
    current = FP4Linear(64, 32, bias=False, recipe=FP4Recipe.paper(), device=device, dtype=torch.bfloat16)
    delayed = FP4Linear(64, 32, bias=False, recipe=FP4Recipe.paper(grad_amax="delayed"), device=device, dtype=torch.bfloat16)
    delayed.weight = current.weight
    x = torch.randn(128, 64, device=device, dtype=torch.bfloat16)
    x[:, :2] *= 20
    grads = []
    for layer in (current, delayed):
        xi = x.clone().requires_grad_()
        layer(xi).float().square().sum().backward()
        grads.append((xi.grad.float(), layer.weight.grad.float()))
        layer.weight.grad = None
    # the first backward of a fresh layer takes the current scales: identical gradients
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    state = delayed.fp4_grad_amax
    assert (state[:2] > 0).all() and (current.fp4_grad_amax == 0).all() and (state[2:5] == 0).all()
    assert state[5] == 1 and state[6] == 1  # the first backward fell back (to the current scales): counted
    assert "fp4_grad_amax" not in delayed.state_dict()  # not checkpointed (see FP4Linear)
    history = delayed.fp4_grad_amax.clone()
    xi = (x * 0.5).requires_grad_()
    delayed(xi).float().square().sum().backward()
    assert not torch.equal(delayed.fp4_grad_amax, history)  # this backward's maxima for the next
    assert delayed.fp4_grad_amax[5] == 1 and delayed.fp4_grad_amax[6] == 2  # a smaller gradient: the history's scales, no fallback
    assert delayed_fallback_rate([delayed.fp4_grad_amax, current.fp4_grad_amax], reset=True) == (1, 2)
    assert delayed_fallback_rate([delayed.fp4_grad_amax]) == (0, 0) and delayed.fp4_grad_amax[0] > 0  # counts reset, history kept
    xr = (x * 0.5).requires_grad_()
    current(xr).float().square().sum().backward()
    assert relative_error(xi.grad.float(), xr.grad.float()) < 0.05  # another FP8 scale, the same grid

