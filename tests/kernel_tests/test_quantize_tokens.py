"""The along-the-tokens quantizer from BF16 token pairs (``kernels.quantize_tokens``) against the
PyTorch reference: bit for bit without the RHT (NVFP4 and MXFP4, round to nearest and stochastic
with the same Philox numbers, NaN/Inf blocks, every tile shape); with the RHT (its butterflies sum
the 16 terms in another order than the reference's matmul) codes may differ on rounding boundaries
only: at most 1 in 1000 elements, each by one grid step, the tensor scale within 1e-6."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from .rht_bounds import assert_within_summation_order  # noqa: E402
from megatron_fp4.hadamard import apply_rht, hadamard_matrix, rht_matrix, rht_signs  # noqa: E402
from megatron_fp4.kernels.quantize_tokens import TILE_BY_LAYOUT, quantize_along_tokens_bf16  # noqa: E402
from megatron_fp4.quantize import QuantSpec, quantize  # noqa: E402
from megatron_fp4.stochastic import new_seed  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# partial tiles at both edges on CPU (96 tokens, 160 columns); LLaMA-like shapes on a GPU
SHAPES = [(96, 160)] if DEVICE == "cpu" else [(96, 160), (8192, 4096), (4096, 11008)]


def activation(shape):
    x = torch.randn(shape) * torch.logspace(-3, 2, shape[1])[None, :]
    x[3, 5] = 200.0  # an outlier: its block's scale is coarse, the tensor scale follows it
    x[:32, 9] = 0.0  # an all-zero column block
    return x.to(torch.bfloat16).to(DEVICE)


def spec_of(block_format, stochastic):
    return QuantSpec("fp4", block_format, stochastic_rounding=stochastic)


def assert_identical(fast, reference):
    assert torch.equal(fast.data, reference.data)
    assert torch.equal(fast.scale.view(torch.uint8), reference.scale.view(torch.uint8))
    if reference.global_scale is None:
        assert fast.global_scale is None
    else:
        assert torch.allclose(fast.global_scale.reshape(()), reference.global_scale.reshape(()), rtol=0, atol=0, equal_nan=True)
    assert fast.spec == reference.spec and tuple(fast.shape) == tuple(reference.shape) and fast.dtype == reference.dtype


def seed_for(stochastic, value=5):
    return new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(value)) if stochastic else None


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_format", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_without_rht_is_the_transposed_quantization(shape, block_format, stochastic):
    x = activation(shape)
    seed = seed_for(stochastic)
    fast = quantize_along_tokens_bf16(x, seed=seed, block_format=block_format)
    assert_identical(fast, quantize(x.float().t().contiguous(), spec_of(block_format, stochastic), seed=seed))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_format", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_with_rht_matches_up_to_summation_order(shape, block_format, stochastic):
    x = activation(shape)
    seed = seed_for(stochastic, 3)
    operand = apply_rht(x, 1234).t().contiguous()
    reference = quantize(operand, spec_of(block_format, stochastic), seed=seed)
    fast = quantize_along_tokens_bf16(x, rht_signs=rht_signs(1234, device=DEVICE), seed=seed, block_format=block_format)
    if block_format == "nvfp4":
        assert torch.allclose(fast.global_scale, reference.global_scale, rtol=1e-6, atol=0)
    assert_within_summation_order(fast, reference, operand.shape)
    assert (fast.scale.view(torch.uint8) != reference.scale.view(torch.uint8)).float().mean() < 1e-3


def test_the_butterflies_are_the_hadamard_transform():
    """Without rounding in the way (small integers, exact in fp32 whatever the order), the RHT'd
    operand's MXFP4 values equal the reference's exactly: the butterflies compute R x itself."""
    x = torch.randint(-3, 4, (64, 32)).to(torch.bfloat16).to(DEVICE)
    operand = apply_rht(x, 99).t().contiguous()
    fast = quantize_along_tokens_bf16(x, rht_signs=rht_signs(99, device=DEVICE), block_format="mxfp4")
    assert_identical(fast, quantize(operand, QuantSpec("fp4", "mxfp4")))


def test_rht_signs_are_the_matrix_signs():
    for seed in (None, 1, 1234):
        signs = rht_signs(seed)
        assert set(signs.tolist()) <= {-1.0, 1.0}
        assert torch.equal(rht_matrix(seed), hadamard_matrix(16) * signs.reshape(1, -1))


@pytest.mark.parametrize("block_format", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_blocks_holding_nan_or_inf_are_as_in_the_reference(block_format, bad):
    x = activation((64, 96))
    x[2, 7] = bad
    x[40, 33] = -bad
    fast = quantize_along_tokens_bf16(x, block_format=block_format)
    assert_identical(fast, quantize(x.float().t().contiguous(), QuantSpec("fp4", block_format)))


@pytest.mark.parametrize("layout", sorted(TILE_BY_LAYOUT))
def test_every_tile_shape_gives_the_default_tiles_bits(layout):
    rht, stochastic, mx = layout
    options = {"block_format": "mxfp4" if mx else "nvfp4", "seed": seed_for(stochastic, 11)}
    if rht:
        options["rht_signs"] = rht_signs(1234, device=DEVICE)
    x = activation((96, 160))
    default = quantize_along_tokens_bf16(x, **options)
    for tile in ((32, 16, 1), (64, 64, 2), (32, 256, 4)):
        other = quantize_along_tokens_bf16(x, tile=tile, **options)
        assert torch.equal(other.data, default.data) and torch.equal(other.scale.view(torch.uint8), default.scale.view(torch.uint8)), tile
        if default.global_scale is not None:
            assert torch.equal(other.global_scale, default.global_scale), tile


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="BF16"):
        quantize_along_tokens_bf16(torch.randn(64, 64, device=DEVICE))
    with pytest.raises(ValueError, match="token dimension"):
        quantize_along_tokens_bf16(torch.randn(48, 64, device=DEVICE).to(torch.bfloat16), block_format="mxfp4")
    with pytest.raises(ValueError, match="rht_signs"):
        quantize_along_tokens_bf16(torch.randn(64, 64, device=DEVICE).to(torch.bfloat16), rht_signs=torch.ones(8, device=DEVICE))
    with pytest.raises(ValueError, match="tile"):
        quantize_along_tokens_bf16(torch.randn(64, 64, device=DEVICE).to(torch.bfloat16), tile=(16, 64, 1), block_format="mxfp4")
    with pytest.raises(ValueError, match="block_format"):
        quantize_along_tokens_bf16(torch.randn(64, 64, device=DEVICE).to(torch.bfloat16), block_format="e8m0")
