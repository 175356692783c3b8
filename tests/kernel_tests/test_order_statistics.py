"""OCC's order-statistics kernels against ``torch.sort`` of the values in fp32 (the reference).

Exact: the order statistic of 16-bit values is one of the values, so the kernels' bounds must
equal the sorted values at the same ranks as numbers (the sign of a zero may differ: the sort
does not order -0.0 and +0.0; NaN equals NaN). On CPU this runs in Triton's interpreter on small
tensors; on a GPU compiled, on the LLaMA sizes and through ``occ_bounds``.
"""

import math
import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.kernels.order_statistics import BLOCK, order_statistic_bounds  # noqa: E402
from megatron_fp4.occ import OCCConfig, _rank, occ_bounds, occ_bounds_of_sample, occ_thresholds, stacked_bounds  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SIZES = [1, 5, BLOCK - 1, BLOCK + 1, 3 * BLOCK + 17] if DEVICE == "cpu" else [1, 5, BLOCK + 1, 1 << 18, (1 << 22) + 3]


def same_number(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.float(), b.float()
    return bool((a == b) | (a.isnan() & b.isnan()))


def activation_like(n: int, dtype: torch.dtype, generator: torch.Generator) -> torch.Tensor:
    """Heavy-tailed values with repeats, zeros of both signs and infinities: the cases radix
    selection must order as the sort does."""
    x = torch.randn(n, generator=generator) * torch.exp(torch.randn(n, generator=generator) * 2)
    x = x.to(dtype)
    if n > 8:
        x[: n // 10] = x[n // 10 : 2 * (n // 10)]  # ties
        x[1::13] = 0.0
        x[2::17] = -0.0
        x[3], x[4] = float("inf"), -float("inf")
    return x[torch.randperm(n, generator=generator)].to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", SIZES)
def test_order_statistics_equal_the_sort(dtype, n):
    generator = torch.Generator().manual_seed(n)
    x = activation_like(n, dtype, generator)
    ordered = torch.sort(x.float()).values
    magnitudes = torch.sort(x.float().abs()).values
    ranks = {(1, n), (_rank(n, 0.01), _rank(n, 0.99)), (max(1, n // 2), max(1, (n + 1) // 2))}
    ranks |= {tuple(sorted(int(v) for v in torch.randint(1, n + 1, (2,), generator=generator)))}
    for low_rank, high_rank in ranks:
        bounds = order_statistic_bounds(x, low_rank, high_rank, symmetric=False)
        assert bounds.dtype == dtype and bounds.shape == (2,)
        assert same_number(bounds[0], ordered[low_rank - 1]) and same_number(bounds[1], ordered[high_rank - 1]), (low_rank, high_rank)
        symmetric = order_statistic_bounds(x, 1, high_rank, symmetric=True)
        assert same_number(symmetric[1], magnitudes[high_rank - 1]) and same_number(symmetric[0], -magnitudes[high_rank - 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_order_statistics_of_gathered_positions(dtype):
    generator = torch.Generator().manual_seed(7)
    x = activation_like(5 * BLOCK, dtype, generator)
    positions = torch.randint(0, x.numel(), (BLOCK + 100,), generator=generator).to(DEVICE)
    ordered = torch.sort(x[positions].float()).values
    count = positions.numel()
    bounds = order_statistic_bounds(x, _rank(count, 0.01), _rank(count, 0.99), symmetric=False, positions=positions)
    assert same_number(bounds[0], ordered[_rank(count, 0.01) - 1]) and same_number(bounds[1], ordered[_rank(count, 0.99) - 1])


def test_nan_sorts_last_as_in_torch_sort():
    x = torch.tensor([1.0, float("nan"), -2.0, -float("nan"), 3.0], dtype=torch.bfloat16, device=DEVICE)
    ordered = torch.sort(x.float()).values  # -2, 1, 3, nan, nan
    for low_rank, high_rank in ((1, 3), (2, 4), (3, 5)):
        bounds = order_statistic_bounds(x, low_rank, high_rank, symmetric=False)
        assert same_number(bounds[0], ordered[low_rank - 1]) and same_number(bounds[1], ordered[high_rank - 1])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="bf16/fp16"):
        order_statistic_bounds(torch.ones(4, device=DEVICE), 1, 2, symmetric=False)
    with pytest.raises(ValueError, match="rank_high=5 outside 1..4"):
        order_statistic_bounds(torch.ones(4, dtype=torch.bfloat16, device=DEVICE), 1, 5, symmetric=False)
    with pytest.raises(ValueError, match="non-empty"):
        order_statistic_bounds(torch.ones(0, dtype=torch.bfloat16, device=DEVICE), 1, 1, symmetric=False)


def test_stacked_bounds_reuses_the_kernels_tensor():
    x = torch.randn(100, dtype=torch.bfloat16, device=DEVICE)
    out = order_statistic_bounds(x, 1, 100, symmetric=False)
    assert stacked_bounds((out[0], out[1])) is out
    low, high = torch.tensor(-1.0), torch.tensor(2.0)
    assert torch.equal(stacked_bounds((low, high)), torch.tensor([-1.0, 2.0]))
    assert torch.equal(stacked_bounds((out[1], out[0])), torch.stack([out[1], out[0]]))  # not its layout: a stack


@pytest.mark.skipif(DEVICE != "cuda", reason="occ_bounds takes the kernels on CUDA only")
@pytest.mark.parametrize("shape", [(512, 576), (8192, 4096), (8192, 11008)])
@pytest.mark.parametrize("symmetric", [False, True])
def test_occ_bounds_on_cuda_equal_the_reference(shape, symmetric):
    """Through the sample (tensors above ``exact_max_elements``) and over all values (below)."""
    generator = torch.Generator().manual_seed(shape[0])
    x = activation_like(math.prod(shape), torch.bfloat16, generator).reshape(shape)
    config = OCCConfig(alpha=0.99, symmetric=symmetric)
    low, high = occ_bounds(x, config)
    reference_low, reference_high = occ_thresholds(x, config)
    assert low.dtype == high.dtype == torch.bfloat16
    assert same_number(low, reference_low) and same_number(high, reference_high)
    sample = x.reshape(-1)[:4096]
    low, high = occ_bounds_of_sample(sample, config)
    reference_low, reference_high = occ_thresholds(sample.reshape(1, -1), OCCConfig(alpha=0.99, symmetric=symmetric, exact_max_elements=1 << 30))
    assert same_number(low, reference_low) and same_number(high, reference_high)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gather", [False, True])
def test_order_statistics_of_the_rms_norm(dtype, gather):
    """RMSNorm(x) at the positions, computed in the kernels: ``rms_norm_occ_bounds``'s values."""
    from megatron_fp4.fused_inputs import rms_norm_reference, rms_rstd_reference

    rows, k = (48, 160) if DEVICE == "cpu" else (8192, 4096)
    generator = torch.Generator().manual_seed(rows + gather)
    wide = activation_like(rows * (k + 32), dtype, generator).reshape(rows, k + 32).nan_to_num(0.0, 0.0, 0.0)
    x = wide[:, 16 : 16 + k]  # a row stride other than K
    weight = (torch.rand(k, generator=generator) + 0.5).to(dtype).to(DEVICE)
    rstd = rms_rstd_reference(x, 1e-5)
    normalized = rms_norm_reference(x, weight, rstd).reshape(-1)
    positions = torch.randint(0, rows * k, (3000,), generator=generator).to(DEVICE) if gather else None
    ranked = normalized if positions is None else normalized[positions]
    ordered = torch.sort(ranked.float()).values
    count = ranked.numel()
    bounds = order_statistic_bounds(x, _rank(count, 0.01), _rank(count, 0.99), symmetric=False, positions=positions, norm=(weight, rstd))
    assert same_number(bounds[0], ordered[_rank(count, 0.01) - 1]) and same_number(bounds[1], ordered[_rank(count, 0.99) - 1])


def test_applicability_follows_the_addressed_extent():
    """The kernels index in int32: a strided norm input counts the rows' stride, not only its values."""
    from megatron_fp4.kernels.order_statistics import MAX_INDEX, supports_order_statistics

    x = torch.empty(4, 8, dtype=torch.bfloat16)
    norm = (torch.ones(8), torch.ones(4))
    assert supports_order_statistics(x) and supports_order_statistics(x, norm)
    assert not supports_order_statistics(x.float()) and not supports_order_statistics(x[:0])
    assert not supports_order_statistics(x.t(), norm)  # columns not contiguous
    wide = torch.empty_strided((3, 8), (MAX_INDEX // 2, 1), dtype=torch.bfloat16, device="meta")
    assert supports_order_statistics(wide) and not supports_order_statistics(wide, norm)
