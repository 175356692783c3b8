"""The fc2 input quantized inside the SwiGLU (``megatron_fp4.fused_inputs``): when it applies, the
OCC bounds it takes, and the FP4 linear's forward/backward with it against the written-out
activation (CPU: the same computation; GPU: the fused kernel, bounds stated in the tests)."""

import dataclasses

import pytest
import torch

from conftest import relative_error, requires_cuda
from megatron_fp4.fused_inputs import swiglu_backward, swiglu_fusable, swiglu_occ_bounds, swiglu_reference
from megatron_fp4.gemm import get_backend
from megatron_fp4.linear import FP4GemmState
from megatron_fp4.occ import OCCConfig, occ_bounds
from megatron_fp4.recipe import FP4Recipe, get_recipe


def pre_activation(rows=64, k=96, device="cpu"):
    g = torch.Generator().manual_seed(11)
    a = torch.randn(rows, 2 * k, generator=g) * 2
    a[:, :3] *= 12  # outlier channels of the gate
    return a.to(torch.bfloat16).to(device)


def test_which_recipes_fuse():
    assert swiglu_fusable(get_recipe("paper")) and swiglu_fusable(get_recipe("direct"))
    assert not swiglu_fusable(get_recipe("nvfp4")) and not swiglu_fusable(get_recipe("mxfp4"))
    paper = get_recipe("paper")
    assert not swiglu_fusable(paper.replace(occ=dataclasses.replace(paper.occ, compensation="exact")))  # a residual needs the activation
    assert not swiglu_fusable(paper.replace(occ=dataclasses.replace(paper.occ, scope="row")))  # per-row quantiles too
    assert swiglu_fusable(paper.replace(occ=dataclasses.replace(paper.occ, compensate=False)))  # clamp only


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("exact_max_elements", [1 << 22, 1000])  # whole tensor, and the sampled quantiles
def test_occ_bounds_equal_those_of_the_written_out_activation(symmetric, exact_max_elements):
    config = OCCConfig(symmetric=symmetric, exact_max_elements=exact_max_elements, sample_size=512)
    a = pre_activation()
    expected = occ_bounds(swiglu_reference(a), config)
    got = swiglu_occ_bounds(a, config)
    assert all(torch.equal(x, y) and x.dtype == y.dtype for x, y in zip(got, expected))


def test_swiglu_backward_is_the_derivative():
    a = pre_activation().float().requires_grad_()
    g = torch.randn(a.shape[0], a.shape[1] // 2)
    (swiglu_reference(a) * g).sum().backward()
    assert relative_error(swiglu_backward(g, a.detach()), a.grad) < 1e-6


def _linear(recipe, a, weight, grad, swiglu):
    state = FP4GemmState(recipe, get_backend("reference" if a.device.type == "cpu" else None))
    y = state.forward(a if swiglu else swiglu_reference(a), weight, torch.bfloat16, swiglu=swiglu)
    gq_dgrad, gq_wgrad = state.quantize_grad_output(grad)
    return y.float(), state.grad_input(gq_dgrad).float(), state.grad_weight(gq_wgrad, weight, grad).float()


@pytest.mark.parametrize("recipe", ["paper", "direct", "nvfp4"])
def test_cpu_path_is_the_written_out_activation(recipe):
    """Without CUDA the SwiGLU form writes the activation and quantizes it: identical numbers."""
    a, recipe = pre_activation(), get_recipe(recipe)
    weight = torch.randn(48, 96, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16) * 0.1
    grad = torch.randn(64, 48, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    recipe = recipe.replace(dgrad_grad_output=dataclasses.replace(recipe.dgrad_grad_output, stochastic_rounding=False),
                            wgrad_grad_output=dataclasses.replace(recipe.wgrad_grad_output, stochastic_rounding=False))
    for fused, written in zip(_linear(recipe, a, weight, grad, True), _linear(recipe, a, weight, grad, False)):
        assert torch.equal(fused, written)


@requires_cuda
@pytest.mark.parametrize("recipe", ["paper", "direct", FP4Recipe.paper(occ=OCCConfig(compensate=False))])
def test_fused_kernel_against_written_out_activation(recipe):
    """On CUDA the operand comes from the fused kernel; its activation may differ from the
    written-out one by one bf16 ulp at ~1e-4 of the elements (the fp32 exponential), which moves
    a few FP4 codes: 2e-2 relative on the output and both gradients (7B fc2 width, 4096 tokens).
    OCC's bounds are the same (taken at the same sample, from the same formula)."""
    recipe = get_recipe(recipe) if isinstance(recipe, str) else recipe
    a = pre_activation(4096, 11008, "cuda")
    weight = (torch.randn(4096, 11008, device="cuda") * 0.02).to(torch.bfloat16)
    grad = torch.randn(4096, 4096, device="cuda").to(torch.bfloat16)
    for name, fused, written in zip(("output", "dgrad", "wgrad"), _linear(recipe, a, weight, grad, True), _linear(recipe, a, weight, grad, False)):
        assert relative_error(fused, written) < 2e-2, (name, relative_error(fused, written))
