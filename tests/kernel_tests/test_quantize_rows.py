"""The fused Triton row quantizer equals the PyTorch reference bit for bit.

On CPU this runs in Triton's interpreter (``TRITON_INTERPRET=1``, set by scripts/test.sh) on
small shapes; on a GPU it runs compiled, on larger ones.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.kernels.quantize_rows import quantize_rows, quantize_rows_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(4, 64), (3, 1000), (5, 2050)] if DEVICE == "cpu" else [(4, 64), (257, 4096), (1024, 5120), (1024, 11008), (33, 20000)]


def assert_identical(fast, ref):
    assert torch.equal(fast.data, ref.data)  # packed codes
    assert torch.equal(fast.scale, ref.scale)
    assert torch.equal(fast.fp8.view(torch.uint8), ref.fp8.view(torch.uint8))
    assert fast.shape == ref.shape and fast.dtype == ref.dtype


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_reference_bit_for_bit(shape, dtype):
    x = (torch.randn(shape) * torch.logspace(-4, 4, shape[0])[:, None]).to(dtype).to(DEVICE)
    x[0, :7] = torch.tensor([0.0, -0.0, 0.25, -0.75, 1.25, 5.0, -3.5])  # ties and signed zero
    x[-1] = 0  # an all-zero row
    reference = quantize_rows_reference(x)
    assert_identical(quantize_rows(x, block=256), reference)  # two-pass path (rows longer than the block)
    assert_identical(quantize_rows(x), reference)  # whole-row path
    if DEVICE == "cuda":  # another thread layout of the row (the interpreter has none)
        assert_identical(quantize_rows(x, num_warps=8), reference)
    for rows_per_program in (2, 4):  # several rows per program, both paths, row count not a multiple
        assert_identical(quantize_rows(x, block=256, rows_per_program=rows_per_program), reference)
        assert_identical(quantize_rows(x, rows_per_program=rows_per_program), reference)


def test_clamp_matches_reference():
    x = torch.randn(16, 512, device=DEVICE)
    x[:, :3] *= 40
    bounds = torch.tensor([-2.5, 2.0], device=DEVICE)
    reference = quantize_rows_reference(x, bounds)
    assert_identical(quantize_rows(x, bounds, block=128), reference)
    assert_identical(quantize_rows(x, bounds), reference)


def test_non_finite_rows_get_nan_scale():
    x = torch.randn(4, 64, device=DEVICE)
    x[1, 3], x[2, 0] = float("nan"), float("inf")
    q = quantize_rows(x)
    assert torch.isnan(q.scale[1:3]).all() and torch.isfinite(q.scale[[0, 3]]).all()
    assert torch.isnan(q.dequantize()[1:3]).all()


def test_odd_k_is_rejected():
    with pytest.raises(ValueError, match=r"shape \(2, 7\)"):
        quantize_rows(torch.randn(2, 7, device=DEVICE))


def test_index_by_rounding_equals_the_comparisons():
    """Every E2M1 grid point, every tie between neighbours and their fp32 neighbours, both signs;
    the row's amax is 6, so its scale is 1 and the values are rounded as they are."""
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    points = torch.cat([grid, (grid[1:] + grid[:-1]) / 2])
    near = torch.cat([points, torch.nextafter(points, torch.full_like(points, 1e9)), torch.nextafter(points, torch.full_like(points, -1e9))])
    near = near[near.abs() <= 6.0]
    row = torch.cat([near, -near, torch.rand(63) * 6.0, torch.tensor([6.0])])
    x = torch.nn.functional.pad(row, (0, row.numel() % 2)).repeat(3, 1).to(DEVICE)
    by_rounding = quantize_rows(x, index_by_rounding=True)
    assert float(by_rounding.scale[0]) == 1.0
    assert torch.equal(by_rounding.data, quantize_rows(x, index_by_rounding=False).data)
    assert_identical(by_rounding, quantize_rows_reference(x))
