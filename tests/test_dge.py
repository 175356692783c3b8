import pytest
import torch

from megatron_fp4.dge import dge_derivative, dge_smooth
from megatron_fp4.formats import E1M2, E2M1, E3M0
from megatron_fp4.recipe import DGEConfig

ALL = [E2M1, E1M2, E3M0]


def interval_points(fmt, count=400, margin=0.02, avoid_mid=0.02):
    """Points inside every grid interval, away from the ends and from the clamped midpoint region."""
    points = []
    for lo, hi in zip(fmt.magnitudes, fmt.magnitudes[1:]):
        t = torch.linspace(margin, 1 - margin, count, dtype=torch.float64)
        t = t[(t - 0.5).abs() > avoid_mid]
        points.append(lo + t * (hi - lo))
    x = torch.cat(points)
    return torch.cat([x, -x])


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
@pytest.mark.parametrize("k", [3.0, 5.0, 8.0])
def test_derivative_matches_finite_difference_on_every_interval(fmt, k):
    x = interval_points(fmt)
    h = 1e-7
    numeric = (dge_smooth(x + h, fmt, k) - dge_smooth(x - h, fmt, k)) / (2 * h)
    analytic = dge_derivative(x, fmt, k, max_derivative=float("inf"))
    # fp64 central differences: truncation error O(h^2 f''') is far below 1e-5 away from the midpoint
    assert torch.allclose(numeric, analytic, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_smooth_function_interpolates_the_grid(fmt):
    grid = torch.tensor(fmt.magnitudes, dtype=torch.float64)
    assert torch.allclose(dge_smooth(grid, fmt), grid)  # continuous at every grid point
    assert torch.allclose(dge_smooth(-grid, fmt), -grid)
    x = torch.linspace(0, fmt.max_value, 10001, dtype=torch.float64)
    assert (dge_smooth(x, fmt).diff() >= 0).all()  # monotone, like the quantizer it models
    for lo, hi in zip(fmt.magnitudes, fmt.magnitudes[1:]):
        mid = torch.tensor([(lo + hi) / 2], dtype=torch.float64)
        assert torch.allclose(dge_smooth(mid, fmt), mid)  # the soft step is centred on the midpoint


def test_derivative_bound_and_values():
    x = torch.linspace(-6, 6, 200001, dtype=torch.float64)
    d = dge_derivative(x)  # k=5, bound 3.0 (paper)
    assert d.max().item() == 3.0 and (d > 0).all()
    on_grid = torch.tensor([0.0, 0.5, 1, 1.5, 2, 3, 4, 6], dtype=torch.float64)
    assert torch.allclose(dge_derivative(on_grid), torch.full((8,), 0.2, dtype=torch.float64))  # 1/k at grid points
    assert dge_derivative(torch.tensor([2.5])).item() == 3.0  # midpoint: clamped infinity
    assert dge_derivative(torch.tensor([1.75]), max_derivative=10.0).item() == 10.0


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_unclamped_derivative_integrates_to_the_interval(fmt):
    # f runs from the lower to the upper grid point, so f' averages to 1 over an interval; away from
    # the integrable midpoint singularity (|2u/δ - 1| > eps) the average is exactly 1 - eps^(1/k)
    n, eps, k = 200000, 0.01, 5.0
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    keep = (2 * t - 1).abs() > eps
    for lo, hi in zip(fmt.magnitudes, fmt.magnitudes[1:]):
        derivative = dge_derivative(lo + t * (hi - lo), fmt, k, max_derivative=float("inf"))
        mean = (derivative * keep).mean().item()
        assert abs(mean - (1 - eps ** (1 / k))) < 1e-4, (lo, hi)


def test_k_one_is_the_straight_through_estimator():
    x = torch.randn(1000) * 3
    assert torch.allclose(dge_derivative(x, k=1.0), torch.ones(1000))


def test_config_validation():
    with pytest.raises(ValueError, match="DGEConfig.k=0.5"):
        DGEConfig(k=0.5)
    with pytest.raises(ValueError, match="DGEConfig.max_derivative"):
        DGEConfig(max_derivative=0.1)


def test_bf16_dge_ablation_is_plain_linear_with_the_dge_factor():
    """`bf16_dge`: forward and input gradient of nn.Linear; the weight gradient times f'(W / s_W)
    with s_W the per-channel FP4 scale amax / 6 (what `paper` would quantize W with)."""
    from conftest import relative_error
    from megatron_fp4.dge import dge_derivative
    from megatron_fp4.linear import fp4_linear
    from megatron_fp4.recipe import get_recipe

    # bf16-representable values: the recipe's operands are BF16, so rounding them changes nothing
    x = torch.randn(64, 96).bfloat16().float().requires_grad_()
    w = (torch.randn(48, 96) * 0.05).bfloat16().float().requires_grad_()
    g = torch.randn(64, 48).bfloat16().float()
    y = fp4_linear(x, w, None, get_recipe("bf16_dge"))
    gx, gw = torch.autograd.grad(y, (x, w), g)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y_ref = torch.nn.functional.linear(x_ref, w_ref)
    rx, rw = torch.autograd.grad(y_ref, (x_ref, w_ref), g)
    scale = w.detach().abs().amax(dim=1, keepdim=True) / 6
    assert relative_error(y, y_ref) < 1e-6 and relative_error(gx, rx) < 1e-6
    assert relative_error(gw, rw * dge_derivative(w.detach() / scale)) < 1e-6
    assert not torch.allclose(gw, rw)  # the factor does change the update


def test_bf16_dge_is_a_recipe_choice():
    import shlex

    from megatron_fp4.training.arguments import parse_args

    llama = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --max-position-embeddings 32 "
             "--micro-batch-size 2 --global-batch-size 2 --train-iters 1 --lr 1e-3 --mock-data --tokenizer-type NullTokenizer --vocab-size 128")
    recipe = parse_args(shlex.split(f"{llama} --fp4 --fp4-recipe bf16_dge")).fp4_quant_recipe
    assert recipe.name == "bf16_dge" and recipe.dge.enabled and not recipe.quantizes and recipe.changes_linear
