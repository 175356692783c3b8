"""The fc2 input quantized inside the SwiGLU (``megatron_fp4.fused_inputs``): when it applies, the
OCC bounds it takes, and the FP4 linear's forward/backward with it against the written-out
activation (CPU: the same computation; GPU: the fused kernel, bounds stated in the tests)."""

import dataclasses

import pytest
import torch

from conftest import relative_error, requires_cuda
from megatron_fp4.fused_inputs import (
    rms_norm_backward, rms_norm_fusable, rms_norm_occ_bounds, rms_norm_reference, rms_rstd_reference,
    swiglu_backward, swiglu_fusable, swiglu_occ_bounds, swiglu_reference,
)
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


# --- the QKV / fc1 input from the RMSNorm (``quantize_rms_norm_input``) ---


def residual_stream(rows=64, k=96, device="cpu", dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(13)
    x = torch.randn(rows, k, generator=g)
    x[:, :2] *= 25  # outlier channels, as LLaMA's residual stream has
    weight = 1 + 0.2 * torch.randn(k, generator=g)
    return x.to(dtype).to(device), weight.to(dtype).to(device)


def test_which_recipes_take_the_norm():
    """Where it measured faster: OCC's inline operand (``paper``) on whole rows; not the plain row
    operand (``direct``: slower on the H200), nor block formats, nor rows past the whole-row limit."""
    paper = get_recipe("paper")
    assert rms_norm_fusable(paper, 4096) and rms_norm_fusable(paper, 5120)
    assert not rms_norm_fusable(get_recipe("direct"), 4096) and not rms_norm_fusable(get_recipe("nvfp4"), 4096)
    assert not rms_norm_fusable(paper, 20000)  # rows held whole only
    assert not rms_norm_fusable(paper.replace(occ=dataclasses.replace(paper.occ, compensate=False)), 4096)  # clamp-only: the row operand


@pytest.mark.parametrize("exact_max_elements", [1 << 22, 1000])  # whole tensor, and the sampled quantiles
def test_norm_occ_bounds_equal_those_of_the_written_out_activation(exact_max_elements):
    config = OCCConfig(exact_max_elements=exact_max_elements, sample_size=512)
    x, weight = residual_stream()
    rstd = rms_rstd_reference(x, 1e-5)
    expected = occ_bounds(rms_norm_reference(x, weight, rstd), config)
    assert all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(rms_norm_occ_bounds(x, weight, rstd, config), expected))


def test_norm_backward_is_the_derivative():
    """The formula (CPU) against autograd through the reference in fp32; torch's own RMSNorm agrees."""
    x, weight = (t.float() for t in residual_stream())
    x.requires_grad_(), weight.requires_grad_()
    g = torch.randn(x.shape)
    (rms_norm_reference(x, weight, rms_rstd_reference(x, 1e-5)) * g).sum().backward()
    dx, dweight = rms_norm_backward(g, x.detach(), weight.detach(), rms_rstd_reference(x.detach(), 1e-5))
    assert relative_error(dx, x.grad) < 1e-5 and relative_error(dweight, weight.grad) < 1e-5
    assert relative_error(rms_norm_reference(x, weight, rms_rstd_reference(x, 1e-5)), torch.nn.functional.rms_norm(x, (x.shape[1],), weight, 1e-5)) < 1e-6


def _normed_linear(recipe, x, norm_weight, weight, grad, fused):
    state = FP4GemmState(recipe, get_backend("reference" if x.device.type == "cpu" else None))
    if fused:
        y = state.forward(x, weight, torch.bfloat16, norm=(norm_weight, 1e-5))
        assert state.norm_rstd is not None and state.norm_rstd.shape == (x.shape[0],)
    else:
        y = state.forward(rms_norm_reference(x, norm_weight, rms_rstd_reference(x, 1e-5)), weight, torch.bfloat16)
    gq_dgrad, gq_wgrad = state.quantize_grad_output(grad)
    return y.float(), state.grad_input(gq_dgrad).float(), state.grad_weight(gq_wgrad, weight, grad).float()


@pytest.mark.parametrize("recipe", ["paper", "direct", "nvfp4"])
def test_norm_cpu_path_is_the_written_out_activation(recipe):
    """Without CUDA the norm form writes the activation and quantizes it: identical numbers."""
    (x, norm_weight), recipe = residual_stream(), get_recipe(recipe)
    weight = torch.randn(48, 96, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16) * 0.1
    grad = torch.randn(64, 48, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    recipe = recipe.replace(dgrad_grad_output=dataclasses.replace(recipe.dgrad_grad_output, stochastic_rounding=False),
                            wgrad_grad_output=dataclasses.replace(recipe.wgrad_grad_output, stochastic_rounding=False))
    for fused, written in zip(_normed_linear(recipe, x, norm_weight, weight, grad, True), _normed_linear(recipe, x, norm_weight, weight, grad, False)):
        assert torch.equal(fused, written)


@requires_cuda
@pytest.mark.parametrize("recipe", ["paper"])
def test_norm_fused_kernel_against_written_out_activation(recipe):
    """On CUDA the operand comes from the fused kernel, with the statistics pass's rstd, which
    differs from the reference's by the fp32 sum's order: the activation then differs by one ulp
    at rare elements, moving a few FP4 codes: 2e-2 relative on the output and both gradients (7B
    QKV width, 4096 tokens). torch's fused RMSNorm backward (CUDA) agrees with the formula."""
    recipe = get_recipe(recipe)
    x, norm_weight = residual_stream(4096, 4096, "cuda")
    weight = (torch.randn(4096, 4096, device="cuda") * 0.02).to(torch.bfloat16)
    grad = torch.randn(4096, 4096, device="cuda").to(torch.bfloat16)
    for name, fused, written in zip(("output", "dgrad", "wgrad"), _normed_linear(recipe, x, norm_weight, weight, grad, True), _normed_linear(recipe, x, norm_weight, weight, grad, False)):
        assert relative_error(fused, written) < 2e-2, (name, relative_error(fused, written))
    rstd = rms_rstd_reference(x, 1e-5)
    dx, dweight = rms_norm_backward(grad, x, norm_weight, rstd)
    formula_dx, formula_dweight = rms_norm_backward(grad.cpu(), x.cpu(), norm_weight.cpu(), rstd.cpu())
    assert relative_error(dx.float().cpu(), formula_dx.float()) < 1e-2 and relative_error(dweight.float().cpu(), formula_dweight.float()) < 1e-2
