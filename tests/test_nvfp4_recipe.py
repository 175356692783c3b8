"""NVIDIA's NVFP4 training recipe, component by component, each against an independent scalar
implementation: the random Hadamard transform, stochastic rounding, 16x16 weight tiles, the
per-tensor scale; then the recipe's linear (wgrad along the tokens) and the errors for sizes it
cannot take. MXFP4 with the same switches."""

import math

import pytest
import torch

from conftest import relative_error
from megatron_fp4.formats import E2M1, decode, encode_stochastic
from megatron_fp4.hadamard import apply_rht, hadamard_matrix, rht_matrix
from megatron_fp4.linear import fp4_linear
from megatron_fp4.quantize import QuantSpec, quantize
from megatron_fp4.recipe import FP4Recipe
from megatron_fp4.scaling import E4M3_MAX

GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_hadamard_is_sylvester_and_orthogonal():
    h = hadamard_matrix(16)
    for i in range(16):  # scalar definition: H[i, j] = (-1)^popcount(i & j) / 4
        for j in range(16):
            assert h[i, j].item() == (-1) ** bin(i & j).count("1") / 4
    for seed in (0, 1, None):
        r = rht_matrix(seed).double()
        assert torch.allclose(r @ r.t(), torch.eye(16, dtype=torch.float64), atol=1e-6)
        assert set(r.abs().unique().tolist()) == {0.25}
    assert not torch.equal(rht_matrix(0), rht_matrix(1))  # the seed picks the signs


def test_rht_inverse_restores_the_operand_and_the_wgrad_gemm_is_unchanged():
    """R^T R = I: applying the inverse restores X (fp32 rounding only), and (R dY)^T (R X) equals
    dY^T X up to fp32 accumulation (bound 1e-5 relative)."""
    x, dy = torch.randn(64, 24), torch.randn(64, 40)
    assert relative_error(apply_rht(apply_rht(x, 3), 3, inverse=True), x) < 1e-6
    exact = dy.double().t() @ x.double()
    assert relative_error(apply_rht(dy, 3).t() @ apply_rht(x, 3), exact) < 1e-5
    # the transform mixes each block of 16 tokens only: row 20 depends on rows 16..31
    bumped = x.clone()
    bumped[20] += 1
    moved = (apply_rht(bumped, 3) - apply_rht(x, 3)).abs().sum(1) > 0
    assert moved[16:32].all() and not moved[:16].any() and not moved[32:].any()


def _scalar_stochastic_round(value: float, draw: float) -> float:
    """E2M1 stochastic rounding of one scaled value, written out: the neighbours lo <= |v| <= hi,
    round up with probability (|v| - lo) / (hi - lo), saturate beyond 6."""
    magnitude = abs(value)
    if magnitude >= GRID[-1]:
        result = GRID[-1]
    else:
        hi = next(g for g in GRID if g >= magnitude)
        lo = max(g for g in GRID if g <= magnitude)
        result = hi if hi == lo or draw < (magnitude - lo) / (hi - lo) else lo
    return math.copysign(result, value)


def test_stochastic_rounding_equals_the_scalar_definition_with_the_same_draws():
    from megatron_fp4.stochastic import new_seed, philox_uniform

    values = torch.cat([torch.linspace(-7, 7, 301), torch.tensor([0.0, 0.5, 6.0, -6.0, 1.25])])
    codes = encode_stochastic(values, E2M1, torch.Generator().manual_seed(5))
    draws = philox_uniform(new_seed("cpu", torch.Generator().manual_seed(5)), values.shape)  # what the generator's seed gives
    expected = [_scalar_stochastic_round(v, d) for v, d in zip(values.tolist(), draws.tolist())]
    assert decode(codes).tolist() == expected
    assert decode(encode_stochastic(values, E2M1, draws=draws)).tolist() == expected


def test_stochastic_rounding_is_unbiased_and_deterministic_per_seed():
    """Over n = 20000 draws of each value inside the grid the mean equals the value: the error
    of a mean of Bernoulli roundings is at most gap / (2 sqrt(n)) in standard deviation (gap <= 2
    on E2M1), so 5 sigma is 5 * 2 / (2 * sqrt(20000)) = 0.035. Grid points stay exact."""
    values = torch.tensor([0.2, 0.7, 1.1, 1.9, 2.6, 3.3, 5.0, -4.5, 6.0, 1.5])
    repeated = values.repeat(20000, 1)
    spec = QuantSpec("fp4", "tensor", stochastic_rounding=True)
    # tensor scale amax/6 = 1: the values are already on the E2M1 scale
    first = quantize(repeated, spec, generator=torch.Generator().manual_seed(11)).dequantize()
    assert (first.mean(0) - values).abs().max() < 0.035
    assert torch.equal(first[:, -1], torch.full((20000,), 1.5)) and torch.equal(first[:, -2], torch.full((20000,), 6.0))
    again = quantize(repeated, spec, generator=torch.Generator().manual_seed(11)).dequantize()
    other = quantize(repeated, spec, generator=torch.Generator().manual_seed(12)).dequantize()
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_2d_tiles_quantize_w_and_w_transposed_alike_and_match_the_scalar_scales():
    w = torch.randn(48, 64) * torch.logspace(-2, 1, 48)[:, None]
    spec = QuantSpec("fp4", "nvfp4_2d")
    q, qt = quantize(w, spec), quantize(w.t().contiguous(), spec)
    assert torch.equal(q.dequantize().t(), qt.dequantize())
    tensor_scale = w.abs().max().item() / (6 * E4M3_MAX)
    assert q.global_scale.item() == pytest.approx(tensor_scale, rel=1e-6)  # amax / (6 * 448)
    for i in range(3):
        for j in range(4):
            tile_amax = w[16 * i : 16 * i + 16, 16 * j : 16 * j + 16].abs().max().item()
            expected = torch.tensor(tile_amax / 6 / tensor_scale).clamp_max(E4M3_MAX).to(torch.float8_e4m3fn).float()
            assert q.scale[i, j].float().item() == pytest.approx(expected.item(), rel=2**-20)


def test_nvfp4_per_tensor_scale_is_amax_over_6_times_448():
    x = torch.randn(32, 64) * 7
    q = quantize(x, QuantSpec("fp4", "nvfp4"))
    assert q.global_scale.item() == pytest.approx(x.abs().max().item() / (6 * 448), rel=1e-6)


def test_nvfp4_linear_wgrad_is_the_tokenwise_definition():
    """dW = Q(R dY)^T_blocks-along-M  Q(R X)^T_blocks-along-M, dX = Q_sr(dY) Q_2d(W), y = Q(X) Q_2d(W)^T:
    recomputed here from the quantizer itself (stochastic rounding off to compare draws-free)."""
    recipe = FP4Recipe.nvfp4().replace(
        dgrad_grad_output=QuantSpec("fp4", "nvfp4"), wgrad_grad_output=QuantSpec("fp4", "nvfp4"), hadamard_seed=4
    )
    x = torch.randn(64, 32).requires_grad_()
    w = (torch.randn(48, 32) * 0.1).requires_grad_()
    g = torch.randn(64, 48)
    y = fp4_linear(x, w, None, recipe)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    xq = quantize(x.detach(), QuantSpec("fp4", "nvfp4")).dequantize_2d()
    wq = quantize(w.detach(), QuantSpec("fp4", "nvfp4_2d")).dequantize_2d()
    assert relative_error(y, xq @ wq.t()) < 1e-6
    assert relative_error(gx, quantize(g, QuantSpec("fp4", "nvfp4")).dequantize_2d() @ wq) < 1e-6
    g_t = quantize(apply_rht(g, 4).t().contiguous(), QuantSpec("fp4", "nvfp4")).dequantize_2d()
    x_t = quantize(apply_rht(x.detach(), 4).t().contiguous(), QuantSpec("fp4", "nvfp4")).dequantize_2d()
    assert relative_error(gw, g_t @ x_t.t()) < 1e-6
    # and it estimates the true dW (the transform cancels): within FP4 error of g^T x
    assert relative_error(gw, g.t() @ x.detach()) < 0.25


def test_mxfp4_takes_the_same_switches():
    recipe = FP4Recipe.mxfp4().replace(
        wgrad_hadamard=True, wgrad_grad_output=QuantSpec("fp4", "mxfp4", stochastic_rounding=True),
        dgrad_grad_output=QuantSpec("fp4", "mxfp4", stochastic_rounding=True),
    )
    x, w = torch.randn(64, 64).requires_grad_(), (torch.randn(64, 64) * 0.1).requires_grad_()
    g = torch.randn(64, 64)
    gx, gw = torch.autograd.grad(fp4_linear(x, w, None, recipe), (x, w), g)
    assert relative_error(gw, g.t() @ x.detach()) < 0.3 and relative_error(gx, g @ w.detach()) < 0.3


def test_sizes_the_recipe_cannot_take_fail_naming_layer_dimension_and_flag():
    recipe = FP4Recipe.nvfp4()
    with pytest.raises(ValueError, match=r"linear input \(--fp4-rht\): .*token dimension in blocks of 16, got 40 .*--no-fp4-rht"):
        fp4_linear(torch.randn(40, 32, requires_grad=True), torch.randn(48, 32, requires_grad=True), None, recipe)
    with pytest.raises(ValueError, match=r"linear weight: shape \(40, 32\) has 40 rows, not a multiple of the 16x16 nvfp4_2d tiles \(--no-fp4-2d-weight-blocks\)"):
        fp4_linear(torch.randn(64, 32, requires_grad=True), torch.randn(40, 32, requires_grad=True), None, recipe)
    with pytest.raises(ValueError, match=r"last dim 24, not a multiple of the nvfp4 block size 16 \(--fp4-recipe with nvfp4 blocks"):
        fp4_linear(torch.randn(64, 24), torch.randn(48, 24), None, recipe)
    with pytest.raises(ValueError, match="wgrad_hadamard=True needs wgrad_along_tokens=True"):
        FP4Recipe.paper(wgrad_hadamard=True)
    with pytest.raises(ValueError, match="stochastic_rounding applies to FP4 elements"):
        QuantSpec("fp8_e5m2", "tensor", stochastic_rounding=True)


def test_rht_matrix_is_made_once_per_device_and_equals_the_cpu_one():
    """The NVFP4 linear asks for R16 four times per fwd+bwd; on an accelerator the copy is cached
    (it was a host-to-device copy, a host synchronisation, per call)."""
    from megatron_fp4.hadamard import rht_matrix

    assert rht_matrix(7) is rht_matrix(7)
    if torch.cuda.is_available():
        first, second = rht_matrix(7, device="cuda"), rht_matrix(7, device=torch.device("cuda", torch.cuda.current_device()))
        assert first is second and torch.equal(first.cpu(), rht_matrix(7))
