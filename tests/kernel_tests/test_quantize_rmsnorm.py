"""The row quantizers with the RMSNorm computed inside them (``norm_weight``/``norm_rstd``, issue 14 item 6).

Given each row's 1/rms, the fused pass has no reduction of its own: its activation (written only
with ``activation_out``) equals ``fused_inputs.rms_norm_reference`` bit for bit, and its operand
equals the reference quantizer's of that activation bit for bit (plain rows, with a clamp after
the norm, OCC's inline operand). The statistics pass ``rms_rstd`` equals ``rms_rstd_reference``
up to the order of its fp32 sum of squares (relative 1e-5: K <= 16384 terms of one sign, each
rounding at most 2^-24 relative, in practice far less). On CPU in Triton's interpreter (small
shapes), compiled on a GPU (LLaMA widths).
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.fused_inputs import rms_norm_reference, rms_rstd_reference  # noqa: E402
from megatron_fp4.kernels.quantize_rows import quantize_rows, quantize_rows_inline, quantize_rows_reference, rms_rstd  # noqa: E402
from megatron_fp4.occ import quantize_with_inline_outliers_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(5, 96), (3, 1000)] if DEVICE == "cpu" else [(257, 4096), (1024, 5120), (64, 8192)]


def residual_stream(shape, dtype):
    generator = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    x = torch.randn(shape, generator=generator) * torch.logspace(-1, 1, shape[0])[:, None]
    x[:, 1] *= 30  # an outlier channel, as LLaMA's residual stream has
    x[-1] = 0  # an all-zero row: rstd = 1 / sqrt(eps)
    weight = (1 + 0.3 * torch.randn(shape[1], generator=generator)).to(dtype)
    return x.to(dtype).to(DEVICE), weight.to(DEVICE)


def assert_identical(fast, ref, fp8=True):
    assert torch.equal(fast.data.view(torch.uint8), ref.data.view(torch.uint8))
    assert torch.equal(fast.scale, ref.scale)
    if fp8:
        assert torch.equal(fast.fp8.view(torch.uint8), ref.fp8.view(torch.uint8))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_rstd_matches_reference(shape, dtype):
    x, _ = residual_stream(shape, dtype)
    assert torch.allclose(rms_rstd(x, 1e-5), rms_rstd_reference(x, 1e-5), rtol=1e-5, atol=0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_operand_of_the_norm_bit_for_bit(shape, dtype):
    x, weight = residual_stream(shape, dtype)
    rstd = rms_rstd(x, 1e-5)
    normalized = rms_norm_reference(x, weight, rstd)
    activation = torch.empty_like(x)
    assert_identical(quantize_rows(x, norm_weight=weight, norm_rstd=rstd, activation_out=activation), quantize_rows_reference(normalized))
    assert torch.equal(activation, normalized)  # no reduction in this pass: the same fp32 products, one rounding
    bounds = torch.tensor([-2.0, 1.5], device=DEVICE)  # OCC's clamp applies to the normalized values
    assert_identical(quantize_rows(x, bounds, norm_weight=weight, norm_rstd=rstd), quantize_rows_reference(normalized, bounds))
    low, high = bounds.to(dtype)
    inline = quantize_rows_inline(x, bounds, norm_weight=weight, norm_rstd=rstd)
    assert_identical(inline, quantize_with_inline_outliers_reference(normalized, low, high), fp8=False)


def test_bad_norm_arguments_are_named():
    x, weight = residual_stream((4, 64), torch.bfloat16)
    rstd = rms_rstd(x, 1e-5)
    with pytest.raises(ValueError, match="come together"):
        quantize_rows(x, norm_weight=weight)
    with pytest.raises(ValueError, match=r"norm_weight must be \[64\]"):
        quantize_rows(x, norm_weight=weight[:32], norm_rstd=rstd)
    with pytest.raises(ValueError, match="holds whole rows"):
        quantize_rows_inline(x, torch.tensor([-1.0, 1.0], device=DEVICE), norm_weight=weight, norm_rstd=rstd, block=32)
    with pytest.raises(ValueError, match="exclude each other"):
        quantize_rows(torch.cat([x, x], -1), swiglu=True, norm_weight=weight, norm_rstd=rstd)
