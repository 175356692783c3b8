"""Quantizers against independent scalar implementations of each definition."""

import math

import numpy as np
import pytest
import torch

from megatron_fp4.quantize import NonFiniteError, QuantSpec, fake_quantize, quantize
from megatron_fp4.scaling import e8m0_to_fp32

E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


def scalar_e2m1(v: float) -> float:
    """Nearest E2M1 value, ties to the even index, saturating: written independently of the package."""
    a = min(abs(v), 6.0)
    best = min(range(8), key=lambda i: (abs(E2M1_GRID[i] - a), i % 2))
    return math.copysign(E2M1_GRID[best], v)


def e4m3_values() -> list[float]:
    """Every finite non-negative FP8 E4M3 (fn) value from its bit patterns (bias 7, no inf, 0x7F NaN)."""
    out = []
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue
            out.append((m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7))
    return out


E4M3 = e4m3_values()


def scalar_e4m3(v: float) -> float:
    """Nearest E4M3 value to v >= 0, ties to even mantissa, saturating at 448."""
    v = min(v, 448.0)
    best = min(range(len(E4M3)), key=lambda i: (abs(E4M3[i] - v), i % 2))
    return E4M3[best]


def f32(v) -> float:
    return float(np.float32(v))


@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_absmax_row_and_tensor(granularity):
    x = torch.randn(16, 64) * torch.rand(16, 1) * 10
    q = quantize(x, QuantSpec("fp4", granularity))
    amax = x.abs().amax(dim=1, keepdim=True) if granularity == "row" else x.abs().amax().reshape(1, 1)
    assert torch.equal(q.scale, amax / 6)
    values = q.element_values()
    expected = torch.tensor([[scalar_e2m1(f32(v / s)) for v in row] for row, s in zip(x.tolist(), (amax / 6).expand(16, 1).flatten().tolist())])
    assert torch.equal(values, expected)
    # the group maximum lands exactly on ±6; dequantization error is at most half the widest gap (1.0)
    assert torch.allclose(values.abs().amax(dim=1 if granularity == "row" else None), torch.tensor(6.0))
    assert ((q.dequantize() - x).abs() <= q.scale * 1.0 + 1e-6).all()


def test_power_of_two_scale_reproduces_the_authors_example():
    x = torch.tensor([[0.001, 0.048, 0.0997, 0.1503, 0.2002, 0.2497, 0.2974, 0.30699, 0.4001, 0.0]])
    out = fake_quantize(x, QuantSpec("fp4", "tensor", power_of_two_scale=True))
    expected = [0, 0.0625, 0.125, 0.125, 0.1875, 0.25, 0.25, 0.25, 0.375, 0]
    assert out.flatten().tolist() == expected


def test_zero_rows_quantize_to_zero_without_nan():
    x = torch.randn(4, 32)
    x[1] = 0
    for spec in [QuantSpec("fp4", "row"), QuantSpec("fp4", "nvfp4"), QuantSpec("fp4", "mxfp4"), QuantSpec("fp8_e4m3", "row")]:
        out = fake_quantize(x, spec)
        assert torch.isfinite(out).all(), spec
        assert torch.equal(out[1], torch.zeros(32)), spec
    assert torch.equal(fake_quantize(torch.zeros(3, 16), QuantSpec("fp4", "tensor")), torch.zeros(3, 16))
    assert quantize(x, QuantSpec("fp4", "row")).scale[1].item() == 1.0  # the documented safe scale


def test_nvfp4_matches_scalar_definition():
    x = torch.randn(6, 64) * torch.logspace(-3, 2, 6)[:, None]
    x[2, :16] = 0  # a zero block
    q = quantize(x, QuantSpec("fp4", "nvfp4"))
    tensor_scale = f32(f32(x.abs().max().item()) / f32(6 * 448))
    assert q.global_scale.item() == tensor_scale
    for r in range(6):
        for b in range(4):
            block = x[r, 16 * b : 16 * (b + 1)].tolist()
            block_scale = scalar_e4m3(f32(f32(max(abs(v) for v in block) / 6) / tensor_scale))
            assert q.scale[r, b].float().item() == block_scale, (r, b)
            decode = f32(block_scale * tensor_scale)
            for i, v in enumerate(block):
                want = 0.0 if decode == 0 else scalar_e2m1(f32(v / decode))
                assert q.element_values()[r, 16 * b + i].item() == want, (r, b, i)
    assert q.scale.dtype == torch.float8_e4m3fn and q.data.shape == (6, 32)


def test_mxfp4_matches_ocp_definition():
    x = torch.randn(5, 96) * torch.logspace(-4, 3, 5)[:, None]
    x[0, :32] = 0
    q = quantize(x, QuantSpec("fp4", "mxfp4"))
    assert q.scale.dtype == torch.uint8 and q.scale.shape == (5, 3)
    for r in range(5):
        for b in range(3):
            block = x[r, 32 * b : 32 * (b + 1)].tolist()
            amax = max(abs(v) for v in block)
            # OCP MX v1.0 §6.3: X = 2^(floor(log2(amax)) - emax_elem), emax_elem = 2 for E2M1
            exponent = -127 if amax == 0 else math.frexp(amax)[1] - 1 - 2
            assert q.scale[r, b].item() == exponent + 127, (r, b)
            for i, v in enumerate(block):
                assert q.element_values()[r, 32 * b + i].item() == scalar_e2m1(v / 2.0**exponent)
    ones = quantize(torch.ones(1, 32), QuantSpec("fp4", "mxfp4"))
    assert ones.scale.item() == 125 and ones.element_values().unique().tolist() == [4.0]
    assert torch.isnan(e8m0_to_fp32(torch.tensor([255], dtype=torch.uint8))).all()


def test_fp8_gradient_spec_is_within_format_precision():
    g = torch.randn(64, 48) * 1e-4
    for dtype, mantissa_bits in [("fp8_e5m2", 2), ("fp8_e4m3", 3)]:
        q = quantize(g, QuantSpec(dtype, "tensor"))
        rel = ((q.dequantize() - g).abs() / g.abs().clamp_min(1e-30))
        normal = g.abs() > g.abs().max() * 2.0**-12  # away from FP8 subnormals
        assert rel[normal].max() <= 2.0 ** -(mantissa_bits + 1) + 1e-6, dtype


def test_block_shapes_and_odd_k_are_rejected_with_the_shape():
    with pytest.raises(ValueError, match=r"shape \(4, 24\).*nvfp4 block size 16"):
        quantize(torch.randn(4, 24), QuantSpec("fp4", "nvfp4"), name="x")
    with pytest.raises(ValueError, match=r"mxfp4 block size 32"):
        quantize(torch.randn(4, 48), QuantSpec("fp4", "mxfp4"))
    with pytest.raises(ValueError, match="even last dim"):
        quantize(torch.randn(4, 7), QuantSpec("fp4", "row"))


def test_nan_raises_in_check_mode_and_propagates_otherwise(monkeypatch):
    x = torch.randn(4, 32)
    x[2, 5] = float("nan")
    x[3, 0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"activation: 1 NaN and 1 Inf .* first at index \(2, 5\)"):
        quantize(x, QuantSpec("fp4", "row"), check_finite=True, name="activation")
    monkeypatch.setenv("MEGATRON_FP4_CHECK_FINITE", "1")
    with pytest.raises(NonFiniteError):
        quantize(x, QuantSpec("fp4", "row"))
    monkeypatch.delenv("MEGATRON_FP4_CHECK_FINITE")
    for spec in [QuantSpec("fp4", "row"), QuantSpec("fp4", "mxfp4"), QuantSpec("fp8_e5m2", "row")]:
        out = fake_quantize(x, spec)
        assert torch.isnan(out[2]).all() and torch.isnan(out[3]).all(), spec  # the poisoned groups
        assert torch.isfinite(out[:2]).all(), spec  # untouched groups stay finite
    assert torch.isnan(fake_quantize(x, QuantSpec("fp4", "tensor"))).all()


def test_quantized_tensor_keeps_packed_codes_and_shape():
    x = torch.randn(3, 5, 64, dtype=torch.bfloat16)
    q = quantize(x, QuantSpec("fp4", "row"))
    assert q.data.dtype == torch.uint8 and q.data.shape == (15, 32)
    assert q.nbytes == 15 * 32 + 15 * 4  # 4 bits per element + one fp32 scale per row
    out = q.dequantize()
    assert out.shape == x.shape and out.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(dtype="int4"), "QuantSpec.dtype='int4'"),
        (dict(granularity="column"), "QuantSpec.granularity='column'"),
        (dict(dtype="fp8_e4m3", granularity="nvfp4"), "FP8 operands allow"),
        (dict(granularity="nvfp4", fp4_format="e1m2"), "FP4 E2M1 only"),
        (dict(fp4_format="e5m2"), "unknown FP4 format"),
        (dict(granularity="mxfp4", power_of_two_scale=True), "power_of_two_scale"),
    ],
)
def test_spec_validation_names_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QuantSpec(**kwargs)
