"""FP4LinearFunction against autograd through a fake-quant reference built from the quantizers."""

import pytest
import torch
from torch import nn

from conftest import relative_error
from megatron_fp4.dge import dge_derivative
from megatron_fp4.linear import FP4Linear, fp4_linear
from megatron_fp4.occ import OCCConfig, occ_bounds, occ_clamp, quantize_with_inline_outliers_reference
from megatron_fp4.quantize import NonFiniteError, QuantSpec, fake_quantize, quantize
from megatron_fp4.recipe import FP4Recipe


class _GradQuant(torch.autograd.Function):
    """Identity forward; quantizes the incoming gradient (the recipe's output-gradient format)."""

    @staticmethod
    def forward(ctx, y, spec):
        ctx.spec = spec
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return fake_quantize(g, ctx.spec), None


class _DGEWeight(torch.autograd.Function):
    """Forward: the quantized weight; backward: gradient times the DGE derivative (or 1: STE)."""

    @staticmethod
    def forward(ctx, w, recipe):
        q = quantize(w, recipe.fprop_weight)
        ctx.save_for_backward(w)
        ctx.recipe, ctx.scale = recipe, q.decode_scale()
        return q.dequantize()

    @staticmethod
    def backward(ctx, g):
        (w,) = ctx.saved_tensors
        r = ctx.recipe
        if not r.dge.enabled:
            return g, None
        return g * dge_derivative(w / ctx.scale, r.fprop_weight.format, r.dge.k, r.dge.max_derivative), None


def fake_quant_reference(x, w, b, recipe):
    """Y = GradQ(STE(Q(clamp X)) @ DGE(W)^T) + ΔX @ W^T + b, differentiated by autograd.

    This is the unfolded backward (``fold_backward_scales=False``, and block recipes, where
    nothing folds): dX = Q_g(dY) Q(W), dW = (Q_g(dY)^T Q(X)) ⊙ f' + dY^T ΔX.
    """
    x2d = x.reshape(-1, x.shape[-1])
    main, residual = x2d, None
    if recipe.occ.inline:  # the clamped entries as E4M3 in the operand itself; straight through
        inline = quantize_with_inline_outliers_reference(x2d.detach(), *occ_bounds(x2d.detach(), recipe.occ)).dequantize_2d()
        x_q = x2d + (inline - x2d).detach()
        y = _GradQuant.apply(x_q @ _DGEWeight.apply(w, recipe).t(), recipe.dgrad_grad_output) + b
        return y.reshape(*x.shape[:-1], w.shape[0])
    if recipe.occ.enabled:
        result = occ_clamp(x2d.detach(), recipe.occ)
        main = x2d + (result.clamped - x2d).detach()  # straight-through clamp
        if recipe.occ.compensate:
            residual = result.residual.to_dense()
    x_q = main + (fake_quantize(main.detach(), recipe.fprop_input) - main).detach()  # STE quantizer
    y = _GradQuant.apply(x_q @ _DGEWeight.apply(w, recipe).t(), recipe.dgrad_grad_output)
    if residual is not None:
        y = y + residual @ w.t()
    y = y + b
    return y.reshape(*x.shape[:-1], w.shape[0])


EXACT_OCC = OCCConfig(compensation="exact")  # the formula these tests write out (fp8: test_occ.py)
RECIPES = {
    "paper": FP4Recipe.paper(occ=EXACT_OCC),
    "paper_row_occ": FP4Recipe.paper(occ=OCCConfig(alpha=0.97, scope="row", compensation="exact")),
    "paper_inline": FP4Recipe.paper(occ=OCCConfig(compensation="inline")),
    "paper_no_compensation": FP4Recipe.paper(occ=OCCConfig(compensate=False)),
    "paper_pow2": FP4Recipe.paper(
        occ=EXACT_OCC,
        fprop_input=QuantSpec("fp4", "row", power_of_two_scale=True),
        wgrad_input=QuantSpec("fp4", "row", power_of_two_scale=True),
    ),
    "direct": FP4Recipe.direct(),
    # the block recipes as laid out (round-to-nearest, wgrad operands along N and K): the
    # along-the-tokens wgrad, the RHT and stochastic rounding are checked in test_nvfp4_recipe.py
    "nvfp4": FP4Recipe.nvfp4(
        wgrad_along_tokens=False, wgrad_hadamard=False,
        dgrad_grad_output=QuantSpec("fp4", "nvfp4"), wgrad_grad_output=QuantSpec("fp4", "nvfp4"),
    ),
    "mxfp4": FP4Recipe.mxfp4(wgrad_along_tokens=False, dgrad_grad_output=FP4Recipe().dgrad_grad_output, wgrad_grad_output=FP4Recipe().wgrad_grad_output),
}


def outlier_activation(*shape):
    x = torch.randn(*shape)
    x[..., torch.randperm(shape[-1])[:3]] *= 30  # channel outliers, as in LLM activations
    return x


ROW_SCALED = ["paper", "paper_row_occ", "paper_inline", "paper_no_compensation", "paper_pow2", "direct"]


@pytest.mark.parametrize("name", RECIPES)
def test_matches_fake_quant_autograd_reference(name):
    recipe = RECIPES[name]
    if name in ROW_SCALED:
        recipe = recipe.replace(fold_backward_scales=False)
    x = outlier_activation(4, 24, 64).requires_grad_()
    w = (torch.randn(48, 64) * 0.05).requires_grad_()
    b = torch.randn(48).requires_grad_()
    y = fp4_linear(x, w, b, recipe)
    grad = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), grad)

    x_ref, w_ref, b_ref = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y_ref = fake_quant_reference(x_ref, w_ref, b_ref, recipe)
    rx, rw, rb = torch.autograd.grad(y_ref, (x_ref, w_ref, b_ref), grad)
    # the same quantized operands multiplied in fp32 in another order: fp32 accumulation error only
    for ours, ref in [(y, y_ref), (gx, rx), (gw, rw), (gb, rb)]:
        assert relative_error(ours, ref) < 1e-5, name


@pytest.mark.parametrize("name", ROW_SCALED)
def test_folded_backward_matches_its_formula(name):
    """dX = Q_g(dY diag(s_W)) C_W and dW = (Q_g(diag(s_X) dY)^T C_X) ⊙ f'(W/s_W) + dY^T ΔX,
    written out from the quantizers (megatron_fp4.backward's definition)."""
    recipe = RECIPES[name]
    x = outlier_activation(96, 64).requires_grad_()
    w = (torch.randn(48, 64) * 0.05).requires_grad_()
    grad = torch.randn(96, 48)
    gx, gw = torch.autograd.grad(fp4_linear(x, w, None, recipe), (x, w), grad)

    main, residual = x.detach(), torch.zeros(96, 64)
    if recipe.occ.enabled and not recipe.occ.inline:
        result = occ_clamp(main, recipe.occ)
        main = result.clamped
        if recipe.occ.compensate:
            residual = result.residual.to_dense()
    xq, wq = quantize(main, recipe.fprop_input), quantize(w.detach(), recipe.fprop_weight)
    if recipe.occ.inline:  # C_X holds the clamped entries as E4M3 values; no separate residual
        xq = quantize_with_inline_outliers_reference(main, *occ_bounds(main, recipe.occ))
    s_x, s_w = xq.decode_scale(), wq.decode_scale()
    dgrad_operand = fake_quantize(grad * s_w.t(), recipe.dgrad_grad_output)
    wgrad_operand = fake_quantize(s_x * grad, recipe.wgrad_grad_output)
    expected_gx = dgrad_operand @ wq.element_values()
    expected_gw = wgrad_operand.t() @ xq.element_values()
    if recipe.dge.enabled:
        expected_gw = expected_gw * dge_derivative(w.detach() / s_w)
    expected_gw = expected_gw + grad.t() @ residual
    # the same quantized operands multiplied in fp32 in another order: fp32 accumulation error only
    assert relative_error(gx, expected_gx) < 1e-5
    assert relative_error(gw, expected_gw) < 1e-5
    # and folding moves only where the gradient's FP8 scale is taken: folded and unfolded both lie
    # within one E5M2 rounding of the gradient from the unquantized-gradient result. Per entry v
    # of the rounded operand |Q8(v) - v| <= 2^-3 |v| + half a subnormal step (amax / 57344 * 2^-17),
    # so elementwise |result - exact| <= 2^-3 |dY| |s| |C| + that step times the sum it enters.
    ux, uw = torch.autograd.grad(fp4_linear(x, w, None, recipe.replace(fold_backward_scales=False)), (x, w), grad)
    if recipe.dgrad_grad_output.dtype == "fp8_e5m2" and recipe.wgrad_grad_output.dtype == "fp8_e5m2":
        c_w, c_x = wq.element_values().abs(), xq.element_values().abs()
        factor = dge_derivative(w.detach() / s_w).abs() if recipe.dge.enabled else torch.ones_like(gw)
        exact_gx = (grad * s_w.t()) @ wq.element_values()
        exact_gw = ((s_x * grad).t() @ xq.element_values()) * factor + grad.t() @ residual
        half_step = lambda v: v.abs().max() / 57344 * 2**-17  # noqa: E731
        bound_gx = 2**-3 * (grad.abs() * s_w.t()) @ c_w
        bound_gw = 2**-3 * ((s_x * grad).abs().t() @ c_x) * factor
        slack = 1e-5
        folded_gx = bound_gx + half_step(grad * s_w.t()) * c_w.sum(0) + slack * exact_gx.abs().max()
        unfolded_gx = bound_gx + half_step(grad) * (s_w.t() @ c_w) + slack * exact_gx.abs().max()
        folded_gw = bound_gw + half_step(s_x * grad) * c_x.sum(0)[None, :] * factor + slack * exact_gw.abs().max()
        unfolded_gw = bound_gw + half_step(grad) * (s_x.t() @ c_x) * factor + slack * exact_gw.abs().max()
        assert ((gx - exact_gx).abs() <= folded_gx).all() and ((ux - exact_gx).abs() <= unfolded_gx).all()
        assert ((gw - exact_gw).abs() <= folded_gw).all() and ((uw - exact_gw).abs() <= unfolded_gw).all()


def test_bf16_preset_is_nn_linear_exactly():
    for dtype in (torch.float32, torch.bfloat16):
        linear = nn.Linear(64, 32, dtype=dtype)
        fp4 = FP4Linear.from_linear(linear, FP4Recipe.bf16())
        x = torch.randn(8, 64, dtype=dtype, requires_grad=True)
        y_ref = linear(x)
        y = fp4(x)
        assert torch.equal(y, y_ref)
        g = torch.randn_like(y)
        assert all(torch.equal(a, b) for a, b in zip(torch.autograd.grad(y, (x, fp4.weight, fp4.bias), g), torch.autograd.grad(y_ref, (x, linear.weight, linear.bias), g)))
    fresh = FP4Linear(64, 32, recipe=FP4Recipe.bf16())
    assert fresh.weight.abs().max() <= 1 / 8 and fresh.bias.abs().max() <= 1 / 8  # nn.Linear's init bound


@pytest.mark.parametrize("compensation, share", [("exact", 0.36), ("fp8", 0.78)])
def test_saved_tensors_are_the_quantized_forms(compensation, share):
    """What backward keeps per activation element, against the 2 B of a bf16 copy: exact OCC 0.5 B
    codes + 4 B/row scale + 8 B per outlier (2% at alpha=0.99), about 0.34x; FP8 OCC the codes plus
    the dense E4M3 residual (1 B/element), about 0.76x."""
    layer = FP4Linear(256, 128, recipe=FP4Recipe.paper(occ=OCCConfig(compensation=compensation)))
    x = outlier_activation(512, 256).requires_grad_()
    y = layer(x)
    state = y.grad_fn.state
    assert state.x_saved.data.dtype == torch.uint8 and state.x_saved.data.shape == (512, 128)
    assert state.w_saved.data.dtype == torch.uint8
    saved_bytes = state.x_saved.nbytes + state.residual.nbytes
    assert saved_bytes < share * x.numel() * 2
    (weight,) = y.grad_fn.saved_tensors
    assert weight.data_ptr() == layer.weight.data_ptr()  # the parameter itself, not a copy
    y.sum().backward()
    assert state.x_saved is None  # released after backward


def test_inline_compensation_keeps_its_e4m3_operand_only():
    """Inline OCC keeps the E4M3 activation operand (1 B/element + 4 B/row scale): about 0.5x of
    a bf16 copy, no residual, no packed codes."""
    layer = FP4Linear(256, 128, recipe=FP4Recipe.paper(occ=OCCConfig(compensation="inline")))
    x = outlier_activation(512, 256).requires_grad_()
    y = layer(x)
    state = y.grad_fn.state
    assert state.residual is None and state.x_saved.outliers_e4m3
    assert state.x_saved.data.dtype == torch.float8_e4m3fn and state.x_saved.data.shape == (512, 256)
    assert state.x_saved.nbytes < 0.51 * x.numel() * 2
    y.sum().backward()
    assert state.x_saved is None


def test_dge_scales_only_the_weight_gradient():
    x = torch.randn(32, 64)
    w = (torch.randn(16, 64) * 0.1).requires_grad_()
    base = FP4Recipe.paper(occ=OCCConfig(enabled=False))
    ste = base.replace(dge=base.dge.__class__(enabled=False))
    grad = torch.randn(32, 16)
    (g_dge,) = torch.autograd.grad(fp4_linear(x, w, None, base), w, grad)
    (g_ste,) = torch.autograd.grad(fp4_linear(x, w, None, ste), w, grad)
    scale = quantize(w.detach(), base.fprop_weight).decode_scale()
    factor = dge_derivative(w.detach() / scale)
    assert relative_error(g_dge, g_ste * factor) < 1e-6


def test_paper_recipe_beats_direct_cast_on_outlier_activations():
    x = outlier_activation(256, 512)
    w = torch.randn(256, 512) * 0.05
    exact = x @ w.t()
    err_paper = relative_error(fp4_linear(x, w, None, FP4Recipe.paper()), exact)
    err_direct = relative_error(fp4_linear(x, w, None, FP4Recipe.direct()), exact)
    assert err_paper < 0.75 * err_direct, (err_paper, err_direct)


def test_bad_inputs():
    w = torch.randn(16, 64)
    with pytest.raises(ValueError, match=r"input shape \(4, 32\) does not match weight shape \(16, 64\)"):
        fp4_linear(torch.randn(4, 32), w)
    with pytest.raises(ValueError, match=r"linear input: shape \(4, 24\).*nvfp4 block size 16"):
        fp4_linear(torch.randn(4, 24), torch.randn(16, 24), recipe=FP4Recipe.nvfp4())
    x = torch.randn(4, 64)
    x[1, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="linear input"):
        fp4_linear(x, w, recipe=FP4Recipe.direct(check_finite=True))
    y = fp4_linear(x, w, recipe=FP4Recipe.direct())
    assert torch.isnan(y[1]).all() and torch.isfinite(y[[0, 2, 3]]).all()  # propagates, never silently finite
    with pytest.raises(ValueError, match="unknown FP4 GEMM backend 'tpu'"):
        fp4_linear(torch.randn(4, 64), w, backend="tpu")
