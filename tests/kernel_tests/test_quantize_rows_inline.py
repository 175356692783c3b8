"""The fused row quantizer for OCC's ``inline`` operand equals its PyTorch reference bit for bit
(interpreter on CPU, compiled on a GPU), and the byte transpose that feeds it to wgrad is exact."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.kernels.codes_to_fp8 import bytes_t  # noqa: E402
from megatron_fp4.kernels.quantize_rows import quantize_rows_inline  # noqa: E402
from megatron_fp4.occ import OCCConfig, occ_bounds, quantize_with_inline_outliers_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# whole rows in registers (every shape up to MAX_WHOLE_ROW; OPTIONS also forces the two-pass path);
# on a GPU LLaMA-2 7B/13B linear inputs and one row past MAX_WHOLE_ROW
SHAPES = [(8, 64), (6, 96), (5, 4100)] if DEVICE == "cpu" else [(8, 64), (8192, 4096), (1024, 5120), (2048, 11008), (4096, 13824), (64, 20000)]
# whole rows (on a GPU also another thread layout: the interpreter has none), two passes of 1024
OPTIONS = [{}, {"block": 1024}] if DEVICE == "cpu" else [{}, {"num_warps": 4}, {"num_warps": 8}, {"block": 1024}, {"block": 1024, "num_warps": 2}]


def _activation(shape, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator) * torch.logspace(-2, 1, shape[1])[None, :]
    x[0, 0] = 3e4  # an outlier far past 448/6 of the clamped maximum: the row's scale widens
    x[1, :] = 0.0  # an all-zero row: scale 1
    x[2, shape[1] // 2] = -500.0
    return x.to(dtype).to(DEVICE)


def _bytes(q):
    return q.data.view(torch.uint8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_matches_reference_bit_for_bit(shape, dtype):
    for seed in (0, int(torch.randint(1 << 30, ()))):  # a fixed case and a fresh one
        x = _activation(shape, dtype, seed)
        low, high = occ_bounds(x, OCCConfig())
        reference = quantize_with_inline_outliers_reference(x, low, high)
        for options in OPTIONS if dtype == torch.bfloat16 or DEVICE == "cuda" else OPTIONS[:1]:  # fp32 input: the default path
            fast = quantize_rows_inline(x, torch.stack([low, high]), **options)
            assert fast.outliers_e4m3 and fast.data.dtype == torch.float8_e4m3fn
            assert torch.equal(fast.scale, reference.scale), (seed, options)
            assert torch.equal(_bytes(fast), _bytes(reference)), (seed, options)


def test_non_finite_rows_dequantize_to_nan():
    x = torch.randn(4, 64).to(DEVICE)
    x[1, 3], x[2, 5], x[3, 7] = float("nan"), float("inf"), -float("inf")
    low, high = torch.tensor(-1.0, device=DEVICE), torch.tensor(1.0, device=DEVICE)
    q = quantize_rows_inline(x, torch.stack([low, high]))
    assert torch.isfinite(q.scale[0]).all() and torch.isnan(q.scale[1:]).all()
    assert torch.isnan(q.dequantize_2d()[1:]).all()  # never a silent finite value


@pytest.mark.parametrize("shape", [(64, 128), (50, 70), (130, 34)] if DEVICE == "cpu" else [(64, 128), (8192, 4096), (2048, 11008), (1000, 2050)])
def test_byte_transpose_is_exact(shape):
    data = torch.randint(0, 256, shape, dtype=torch.uint8, device=DEVICE).view(torch.float8_e4m3fn)
    out = bytes_t(data)
    assert out.dtype == data.dtype and out.shape == (shape[1], shape[0]) and out.is_contiguous()
    assert torch.equal(out.view(torch.uint8), data.view(torch.uint8).t())
