"""The fused OCC FP8 residual kernel equals its PyTorch reference bit for bit (interpreter on CPU,
compiled on a GPU); NaN/Inf rows get a NaN scale as in ``quantize``."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.kernels.occ_residual import fp8_residual, fp8_residual_reference, fp8_rows_fused  # noqa: E402
from megatron_fp4.occ import OCCConfig, fp8_rows, fp8_rows_reference, occ_bounds  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(8, 64), (5, 4100)] if DEVICE == "cpu" else [(8, 64), (8192, 4096), (1024, 11008)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_matches_reference_bit_for_bit(shape, dtype):
    x = (torch.randn(shape) * torch.logspace(-2, 2, shape[1])[None, :]).to(dtype).to(DEVICE)
    x[0, 0] = 1e4  # a spike: the row's other residuals go subnormal in E4M3
    low, high = occ_bounds(x, OCCConfig())
    fast, reference = fp8_residual(x, low, high), fp8_residual_reference(x, low, high)
    assert torch.equal(fast[0].view(torch.uint8), reference[0].view(torch.uint8))
    assert torch.equal(fast[1], reference[1])


def test_rows_without_outliers_and_non_finite_rows():
    x = torch.randn(4, 64).to(DEVICE)
    x[1, 3], x[2, 5] = float("nan"), float("inf")
    low, high = torch.tensor(-10.0, device=DEVICE), torch.tensor(10.0, device=DEVICE)
    data, scale = fp8_residual(x, low, high)
    assert scale[0].item() == 1.0 and scale[3].item() == 1.0 and not data[[0, 3]].float().any()
    assert torch.isnan(scale[1:3]).all()


def test_per_row_bounds_are_refused_by_the_kernel():
    x = torch.randn(4, 64).to(DEVICE)
    with pytest.raises(ValueError, match="scalar"):
        fp8_residual(x, torch.full((4, 1), -1.0, device=DEVICE), torch.full((4, 1), 1.0, device=DEVICE))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_weight_rows_match_reference_bit_for_bit(shape, dtype):
    """W's E4M3 rows for the FP8 compensation GEMM: the kernel (no clamp) equals the PyTorch
    form, zero rows (scale 1), NaN/Inf rows (NaN scale) and subnormal E4M3 values included."""
    w = (torch.randn(max(shape[0], 6), shape[1]) * torch.logspace(-3, 1, shape[1])[None, :]).to(dtype).to(DEVICE)
    w[1] = 0.0
    w[2, 7] = float("nan")
    w[3, 1] = float("-inf")
    w[4, 0] = -3e4  # the rest of its row lands in E4M3's subnormals
    fast, reference = fp8_rows_fused(w), fp8_rows_reference(w)
    finite = torch.isfinite(reference[1]).squeeze(1)
    assert torch.equal(fast[1][finite], reference[1][finite]) and torch.isnan(fast[1][~finite]).all()
    assert torch.equal(fast[0].view(torch.uint8)[finite], reference[0].view(torch.uint8)[finite])
    assert fast[1][1].item() == 1.0
    if DEVICE == "cuda":  # the dispatch takes the kernel on CUDA
        assert torch.equal(fp8_rows(w)[0].view(torch.uint8), fast[0].view(torch.uint8))
