import math

import pytest
import torch

from conftest import relative_error
from megatron_fp4.occ import (
    OCCConfig,
    SparseResidual,
    clamp_to,
    occ_bounds,
    occ_clamp,
    occ_hot_channel_residual,
    occ_residual,
    occ_thresholds,
    quantile_order_statistic,
)


def test_exact_thresholds_are_order_statistics():
    x = torch.randn(300, 200)
    config = OCCConfig(alpha=0.99)
    low, high = occ_thresholds(x, config)
    n = x.numel()
    assert (x > high).sum() <= (1 - 0.99) * n <= (x >= high).sum()
    assert (x < low).sum() <= (1 - 0.99) * n + 1 <= (x <= low).sum() + 1
    sorted_x = x.flatten().sort().values
    assert high == sorted_x[math.ceil(0.99 * n) - 1]


def test_sampled_quantile_rank_error_is_bounded():
    x = torch.randn(2000, 1000) * torch.exp(torch.randn(1000))  # 2M heavy-ish values
    for alpha in (0.999, 0.99, 0.97):
        config = OCCConfig(alpha=alpha, exact_max_elements=10_000, sample_size=1 << 16)
        estimate = quantile_order_statistic(x, alpha, config)
        rank_error = abs((x <= estimate).float().mean().item() - alpha)
        sigma = math.sqrt(alpha * (1 - alpha) / config.sample_size)
        assert rank_error < 6 * sigma, (alpha, rank_error, sigma)  # binomial rank error, 6 sigma


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_compensation_restores_exactly_what_clamping_removed(dtype):
    x = (torch.randn(256, 128) * torch.exp(2 * torch.randn(128))).to(dtype)
    result = occ_clamp(x, OCCConfig(alpha=0.97))
    assert result.clamped.dtype == dtype
    assert torch.equal(result.clamped.float() + result.residual.to_dense(), x.float())
    assert 0.05 < result.clamp_fraction < 0.07  # two-sided: 2 (1 - alpha)


def test_compensation_fp32_within_one_rounding():
    x = torch.randn(128, 64) * 100
    result = occ_clamp(x, OCCConfig(alpha=0.99, symmetric=True))
    restored = result.clamped + result.residual.to_dense()
    assert torch.allclose(restored, x, rtol=2**-23, atol=0)
    low, high = occ_thresholds(x, OCCConfig(alpha=0.99, symmetric=True))
    assert low == -high and (result.clamped.abs() <= high).all()


def test_row_scope_clamps_each_token_separately():
    x = torch.randn(64, 512) * torch.logspace(-2, 2, 64)[:, None]
    result = occ_clamp(x, OCCConfig(alpha=0.99, scope="row"))
    per_row = (result.residual.to_dense() != 0).sum(dim=1)
    assert (per_row <= 2 * math.ceil(0.01 * 512)).all() and (per_row > 0).all()


def _dense_products(residual: SparseResidual, weight, grad):
    dense = residual.to_dense()
    return dense @ weight.t(), grad.t() @ dense


@pytest.mark.parametrize(
    "layout, sparse_format, dtype",
    [("few_columns", "csr", torch.float32), ("scattered", "csr", torch.float32), ("scattered", "coo", torch.float32),
     ("scattered", "dense", torch.float32), ("scattered", "dense", torch.bfloat16)],
)
def test_sparse_products_equal_dense(layout, sparse_format, dtype, monkeypatch):
    monkeypatch.setattr(SparseResidual, "sparse_format", sparse_format)
    rows, k, n = 512, 256, 96
    x = torch.randn(rows, k)
    if layout == "few_columns":
        x[:, torch.randperm(k)[:6]] *= 50  # channel outliers: the gathered-column GEMM runs
    else:
        x.view(-1)[torch.randperm(rows * k)[:2000]] *= 50  # everywhere: the sparse (CSR/COO) product runs
    result = occ_clamp(x, OCCConfig(alpha=0.995))
    columns = result.residual.columns.unique().numel()
    assert (columns <= SparseResidual.dense_column_fraction * k) == (layout == "few_columns")
    weight, grad = torch.randn(n, k).to(dtype), torch.randn(rows, n).to(dtype)  # bf16: the hi/lo split runs
    forward_ref, wgrad_ref = _dense_products(result.residual, weight.float(), grad.float())
    # same fp32 products summed in another order: norm-relative error at fp32 accumulation level;
    # the 16-bit hi/lo split holds ΔA to ~16 bits (2^-17 = 7.6e-6 relative at worst, 2.4e-6 measured)
    bound = 1e-5 if dtype == torch.bfloat16 else 1e-6
    assert relative_error(result.residual.matmul_weight_t(weight), forward_ref) < bound
    assert relative_error(result.residual.t_matmul(grad), wgrad_ref) < bound


def test_empty_residual_products_are_zero():
    residual = SparseResidual(torch.zeros(0, dtype=torch.int32), torch.zeros(0), (4, 8))
    assert torch.equal(residual.matmul_weight_t(torch.randn(3, 8)), torch.zeros(4, 3))
    assert torch.equal(residual.t_matmul(torch.randn(4, 3)), torch.zeros(3, 8))


@pytest.mark.parametrize(
    "kwargs, message",
    [(dict(alpha=1.0), "OCCConfig.alpha=1.0"), (dict(alpha=0.3), "alpha"), (dict(scope="block"), "OCCConfig.scope")],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OCCConfig(**kwargs)


def _channel_outliers(rows: int, k: int, hot: list[int], dtype=torch.bfloat16) -> torch.Tensor:
    x = torch.randn(rows, k)
    x[:, hot] *= 30  # a few channels hold the outliers, as in LLM activations
    return x.to(dtype)


def test_hot_channels_are_the_largest_clamped_energy():
    """The chosen channels are the top ones by sum of squared residual, recomputed here in fp64."""
    x = _channel_outliers(128, 512, [3, 50, 51, 400])
    config = OCCConfig(compensation="hot_channels", hot_channel_fraction=8 / 512)
    low, high = occ_bounds(x, config)
    residual = occ_hot_channel_residual(x, low, high, config.hot_channel_fraction)
    excess = x.double() - clamp_to(x, low, high).double()
    expected = set(torch.topk(excess.square().sum(0), 8).indices.tolist())
    assert set(residual.columns.tolist()) == expected and {3, 50, 51, 400} <= expected
    # the kept values are ΔA of those columns (computed in the input's dtype)
    dense = residual.to_dense()
    assert torch.equal(dense[:, residual.columns], (x - clamp_to(x, low, high)).float()[:, residual.columns])
    assert torch.count_nonzero(dense[:, [c for c in range(512) if c not in expected]]) == 0


def test_hot_channels_with_every_channel_equal_exact_compensation():
    x = torch.randn(64, 96)
    low, high = occ_bounds(x, OCCConfig())
    everything = occ_hot_channel_residual(x, low, high, 1.0)
    assert torch.equal(everything.to_dense(), occ_residual(x, low, high).to_dense())


@pytest.mark.parametrize("dtype, bound", [(torch.float32, 1e-5), (torch.bfloat16, 2**-7)])
def test_hot_channel_products_equal_dense(dtype, bound):
    """ΔA_hot W^T and dY^T ΔA_hot, added in place into an output of the operands' dtype, against
    fp64 products of the dense residual: fp32 accumulation, then one rounding of each output
    element to the dtype (fp32: a few roundings of the sum, 1e-5; bf16: 2^-9 per element on the
    output plus the input rounding of the addend, bound 2^-7 relative)."""
    x = _channel_outliers(64, 256, [7, 9, 200], dtype)
    low, high = occ_bounds(x, OCCConfig())
    residual = occ_hot_channel_residual(x, low, high, 16 / 256)
    weight, grad = torch.randn(48, 256).to(dtype), torch.randn(64, 48).to(dtype)
    dense = residual.to_dense().double()
    base = torch.randn(64, 48).to(dtype)
    out = residual.add_matmul_weight_t_to(base.clone(), weight)
    assert relative_error(out, base.double() + dense @ weight.double().t()) < bound
    assert relative_error(residual.t_matmul(grad), grad.double().t() @ dense) < bound
    accumulated = torch.ones(48, 256, dtype=dtype)
    residual.add_t_matmul_to(accumulated, grad)
    assert relative_error(accumulated, 1 + grad.double().t() @ dense) < bound


def test_hot_channel_linear_is_the_stated_definition():
    """The `paper` linear with hot-channel compensation: y = Q(clamp X) Q(W)^T + ΔX_hot W_hot^T,
    dW = (Q8(dY)^T Q(clamp X)) ⊙ f'(W/s) + dY^T ΔX_hot; the exact-compensation linear minus
    (ΔX - ΔX_hot) terms. Checked against the exact linear on channel-concentrated outliers where
    every clamped channel is hot: then both are the same function (up to accumulation order)."""
    from megatron_fp4.linear import fp4_linear
    from megatron_fp4.recipe import FP4Recipe

    x = _channel_outliers(64, 128, [5, 17], torch.float32).requires_grad_(True)
    w = (torch.randn(32, 128) * 0.05).requires_grad_(True)
    exact = FP4Recipe.paper(occ=OCCConfig(compensation="exact"))
    hot = exact.replace(occ=OCCConfig(compensation="hot_channels", hot_channel_fraction=1.0))
    y_exact = fp4_linear(x, w, None, exact)
    gx_e, gw_e = torch.autograd.grad(y_exact.sum(), (x, w))
    y_hot = fp4_linear(x, w, None, hot)
    gx_h, gw_h = torch.autograd.grad(y_hot.sum(), (x, w))
    assert relative_error(y_hot, y_exact) < 1e-6 and relative_error(gw_h, gw_e) < 1e-6 and torch.equal(gx_h, gx_e)
    partial = exact.replace(occ=OCCConfig(compensation="hot_channels", hot_channel_fraction=2 / 128))
    y_partial = fp4_linear(x, w, None, partial)
    y_clamp_only = fp4_linear(x, w, None, exact.replace(occ=OCCConfig(compensate=False)))
    # with the two outlier channels hot, the output sits between clamp-only and exact OCC, much
    # closer to exact: what stays uncompensated is the few clamped entries of the other channels
    assert relative_error(y_partial, y_exact) < 0.25 * relative_error(y_clamp_only, y_exact)


def test_fp8_residual_is_the_exact_residual_rounded_to_e4m3():
    """Every entry of the FP8 residual is the exact ΔA rounded to E4M3 under its token's scale:
    relative error <= 2^-4 for E4M3 normals, absolute <= half a subnormal step (scale · 2^-10)."""
    from megatron_fp4.occ import occ_fp8_residual

    x = _channel_outliers(96, 256, [3, 40], torch.bfloat16)
    x[5, 7] = 1e4  # a spike far beyond the rest: its row's small residuals go subnormal
    low, high = occ_bounds(x, OCCConfig())
    exact = occ_residual(x, low, high).to_dense().double()
    fp8 = occ_fp8_residual(x, low, high)
    assert fp8.data.dtype == torch.float8_e4m3fn and fp8.scale.shape == (96, 1)
    error = (fp8.to_dense().double() - exact).abs()
    assert (error <= exact.abs() * 2**-4 + fp8.scale.double() * 2**-10).all()
    assert not (fp8.to_dense()[exact == 0] != 0).any()  # nothing invented
    lost = (fp8.to_dense() == 0) & (exact != 0)  # only residuals below half an E4M3 subnormal step
    assert (exact.abs()[lost] <= (fp8.scale.double() * 2**-10).expand_as(exact)[lost]).all()
    assert fp8.nnz == int((fp8.to_dense() != 0).sum())


def test_fp8_compensation_linear_stays_close_to_exact_compensation():
    """y, dX, dW of `paper` with FP8 compensation against exact compensation. Only the compensation
    term differs: y_fp8 - y_exact = R8 W8^T - ΔX W^T = (R8 - ΔX) W8^T + ΔX (W8 - W)^T and
    dW_fp8 - dW_exact = dY^T (R8 - ΔX), with R8, W8 the dequantized E4M3 forms; so elementwise
    |y_fp8 - y_exact| <= |R8 - ΔX| |W8|^T + |ΔX| |W8 - W|^T (triangle inequality; slack: fp32
    accumulation, 1e-5 of the summed magnitudes) and likewise for dW. The E4M3 roundings
    themselves are bounded in test_fp8_residual_is_the_exact_residual_rounded_to_e4m3. And the
    compensation must matter: FP8 lands far closer to exact than clamp-only (at most half its
    error; 0.21 at worst over 300 seeds). dX is the same function."""
    from megatron_fp4.linear import fp4_linear
    from megatron_fp4.occ import fp8_rows_reference, occ_fp8_residual
    from megatron_fp4.recipe import FP4Recipe

    x = _channel_outliers(64, 128, [5, 17], torch.float32).requires_grad_(True)
    w = (torch.randn(32, 128) * 0.05).requires_grad_(True)
    g = torch.randn(64, 32)
    paper = FP4Recipe.paper()
    results = {}
    for name, occ in {"exact": OCCConfig(compensation="exact"), "fp8": OCCConfig(compensation="fp8"), "clamp": OCCConfig(compensate=False)}.items():
        y = fp4_linear(x, w, None, paper.replace(occ=occ))
        results[name] = (y, *torch.autograd.grad(y, (x, w), g))
    low, high = occ_bounds(x.detach(), OCCConfig())
    delta = occ_residual(x.detach(), low, high).to_dense().double()
    r8 = occ_fp8_residual(x.detach(), low, high).to_dense().double()
    w_data, w_scale = fp8_rows_reference(w.detach())
    w8, w64 = w_data.double() * w_scale.double(), w.detach().double()
    y_bound = (r8 - delta).abs() @ w8.abs().t() + delta.abs() @ (w8 - w64).abs().t()
    y_slack = 1e-5 * (results["exact"][0].detach().double().abs() + delta.abs() @ w64.abs().t())
    assert ((results["fp8"][0] - results["exact"][0]).detach().double().abs() <= y_bound + y_slack).all()
    w_bound = g.double().abs().t() @ (r8 - delta).abs()
    w_slack = 1e-5 * (results["exact"][2].double().abs() + g.double().abs().t() @ delta.abs())
    assert ((results["fp8"][2] - results["exact"][2]).double().abs() <= w_bound + w_slack).all()
    for index in (0, 2):  # y and dW: the compensation is doing its job
        assert relative_error(results["fp8"][index], results["exact"][index]) < 0.5 * relative_error(results["clamp"][index], results["exact"][index])
    assert torch.equal(results["fp8"][1], results["exact"][1])


def test_fp8_compensation_flag():
    import shlex

    from megatron_fp4.training.arguments import parse_args

    llama = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --max-position-embeddings 32 "
             "--micro-batch-size 2 --global-batch-size 2 --train-iters 1 --lr 1e-3 --mock-data --tokenizer-type NullTokenizer --vocab-size 128")
    args = parse_args(shlex.split(f"{llama} --fp4 --fp4-recipe paper --fp4-occ-compensation fp8"))
    assert args.fp4_quant_recipe.occ.compensation == "fp8"


@pytest.mark.parametrize("compensation", ["fp8", "exact"])
def test_forward_only_compensation_drops_exactly_the_residual_wgrad_term(compensation):
    """--no-fp4-occ-wgrad-compensation: the same forward and dX; dW lacks exactly the residual's
    term dY^T ΔA (the compensation's own product, recomputed here); nothing is kept for it."""
    from megatron_fp4.linear import FP4GemmState, fp4_linear
    from megatron_fp4.gemm import get_backend
    from megatron_fp4.occ import occ_compensation_residual
    from megatron_fp4.recipe import FP4Recipe

    x = _channel_outliers(64, 128, [5, 17], torch.float32).requires_grad_(True)
    w = (torch.randn(32, 128) * 0.05).requires_grad_(True)
    g = torch.randn(64, 32)
    full = FP4Recipe.paper(occ=OCCConfig(compensation=compensation))
    forward_only = full.replace(occ=OCCConfig(compensation=compensation, compensate_wgrad=False))
    y_full = fp4_linear(x, w, None, full)
    gx_full, gw_full = torch.autograd.grad(y_full, (x, w), g)
    y_fwd = fp4_linear(x, w, None, forward_only)
    gx_fwd, gw_fwd = torch.autograd.grad(y_fwd, (x, w), g)
    assert torch.equal(y_fwd, y_full) and torch.equal(gx_fwd, gx_full)
    residual = occ_compensation_residual(x.detach(), *occ_bounds(x.detach(), full.occ), full.occ)
    term = residual.add_t_matmul_to(torch.zeros(32, 128), g)
    assert term.abs().max() > 0
    assert relative_error(gw_full - gw_fwd, term) < 1e-5
    state = FP4GemmState(forward_only, get_backend("reference"))
    state.forward(x.detach(), w.detach())
    assert state.residual is None  # nothing kept for backward
    assert "forward only" in forward_only.describe()


def test_forward_only_compensation_flag_and_memory_plan():
    import shlex

    from megatron_fp4.plan import saved_bytes_per_element
    from megatron_fp4.recipe import FP4Recipe
    from megatron_fp4.training.arguments import parse_args

    llama = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --max-position-embeddings 32 "
             "--micro-batch-size 2 --global-batch-size 2 --train-iters 1 --lr 1e-3 --mock-data --tokenizer-type NullTokenizer --vocab-size 128")
    recipe = parse_args(shlex.split(f"{llama} --fp4 --fp4-occ-compensation fp8 --no-fp4-occ-wgrad-compensation")).fp4_quant_recipe
    assert recipe.occ.compensate and not recipe.occ.compensate_wgrad
    assert saved_bytes_per_element(recipe) == saved_bytes_per_element(FP4Recipe.paper(occ=OCCConfig(compensate=False)))
    assert saved_bytes_per_element(recipe) < saved_bytes_per_element(FP4Recipe.paper(occ=OCCConfig(compensation="fp8")))
    assert saved_bytes_per_element(FP4Recipe.paper()) == 1.0  # the default, inline: the E4M3 operand
    with pytest.raises(SystemExit):
        parse_args(shlex.split(f"{llama} --fp4 --no-fp4-occ --no-fp4-occ-wgrad-compensation"))
    with pytest.raises(SystemExit):  # the default compensation (inline) always compensates both
        parse_args(shlex.split(f"{llama} --fp4 --no-fp4-occ-wgrad-compensation"))
