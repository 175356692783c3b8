"""The fused NVFP4/MXFP4 block quantizer equals the PyTorch reference bit for bit.

On CPU this runs in Triton's interpreter on small shapes; on a GPU compiled, on larger ones.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.kernels.quantize_blocks import quantize_blocks  # noqa: E402
from megatron_fp4.quantize import QuantSpec, quantize  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (32, 160): rows of 10 NVFP4 / 5 MXFP4 blocks walked as one run (items span rows); (3, 544), (7, 1056):
# block counts with few factors of two, items within rows with the last one masked
SHAPES = [(4, 64), (3, 544), (7, 1056), (32, 160)] if DEVICE == "cpu" else [(4, 64), (1000, 4096), (4096, 11008), (33, 20000 // 32 * 32), (2048, 5120)]


@pytest.mark.parametrize("granularity", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("blocks_per_program", [None, 4])  # the default, and a row spread over several programs
def test_matches_reference_bit_for_bit(granularity, shape, dtype, blocks_per_program):
    spec = QuantSpec("fp4", granularity)
    # a dynamic range wide enough that NVFP4 block scales underflow E4M3 and MXFP4 ones go tiny
    x = (torch.randn(shape) * torch.logspace(-12, 3, shape[0])[:, None]).to(dtype).to(DEVICE)
    x[0, :32] = 0  # all-zero blocks
    x[-1, :7] = torch.tensor([0.0, -0.0, 0.25, -0.75, 1.25, 5.0, -3.5])
    reference = quantize(x, spec)
    # the persistent kernel with its next-item prefetch, and (once per format and shape on CPU) without
    for prefetch in (True, False) if DEVICE == "cuda" or (dtype == torch.bfloat16 and blocks_per_program is None) else (True,):
        fast = quantize_blocks(x, spec, blocks_per_program, prefetch=prefetch)
        assert torch.equal(fast.data, reference.data)
        assert torch.equal(fast.scale.view(torch.uint8), reference.scale.view(torch.uint8))
        if granularity == "nvfp4":
            assert torch.equal(fast.global_scale, reference.global_scale)
        assert torch.equal(fast.dequantize(), reference.dequantize())


@pytest.mark.parametrize("granularity", ["nvfp4", "mxfp4"])
def test_strided_rows_match_reference(granularity):
    """Rows of a wider tensor (not one run of blocks): items within rows, same bits."""
    spec = QuantSpec("fp4", granularity)
    wide = torch.randn(32, 256).to(torch.bfloat16).to(DEVICE)
    x = wide[:, :160]
    fast, reference = quantize_blocks(x, spec), quantize(x, spec)
    assert torch.equal(fast.data, reference.data) and torch.equal(fast.scale.view(torch.uint8), reference.scale.view(torch.uint8))


@pytest.mark.parametrize("granularity", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_propagates(granularity, bad):
    """A block holding NaN or Inf dequantizes to NaN, as in the reference: for MXFP4 that block
    only; for NVFP4 the whole tensor, whose fp32 tensor scale is then NaN."""
    x = torch.randn(4, 64, device=DEVICE)
    x[1, 3] = bad
    spec = QuantSpec("fp4", granularity)
    q, reference = quantize_blocks(x, spec), quantize(x, spec)
    values = q.dequantize()
    assert torch.isnan(values[1, :32]).all()
    if granularity == "nvfp4":
        assert torch.isnan(values).all()
    else:
        assert torch.isfinite(values[[0, 2, 3]]).all() and torch.isfinite(values[1, 32:]).all()
    assert torch.equal(q.data, reference.data) and torch.equal(q.scale.view(torch.uint8), reference.scale.view(torch.uint8))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"shape \(2, 40\).*nvfp4 block size 16"):
        quantize_blocks(torch.randn(2, 40, device=DEVICE), QuantSpec("fp4", "nvfp4"))


@pytest.mark.parametrize("numel", [1, 1000, 8192 * 3 + 17])
def test_tensor_absmax_equals_torch(numel):
    from megatron_fp4.kernels.quantize_blocks import tensor_absmax

    x = (torch.randn(numel) * 10).to(torch.bfloat16).to(DEVICE)
    assert torch.equal(tensor_absmax(x, block=1024), x.float().abs().amax())
    x[numel // 2] = float("-inf")
    assert tensor_absmax(x, block=1024).item() == float("inf")
    x[0] = float("nan")
    assert torch.isnan(tensor_absmax(x, block=1024))


def test_tiles_are_not_taken_for_blocks():
    """16x16 tiles (nvfp4_2d) are not 1-D blocks: the block kernel must refuse them (it once took
    them as 1x16 blocks without a tensor scale, a wrong result on CUDA only)."""
    from megatron_fp4.kernels.quantize_blocks import supports_block_spec

    assert not supports_block_spec(QuantSpec("fp4", "nvfp4_2d"))
    with pytest.raises(ValueError, match="NVFP4/MXFP4"):
        quantize_blocks(torch.randn(32, 32).to(DEVICE), QuantSpec("fp4", "nvfp4_2d"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the along-the-tokens dispatch takes the kernel on CUDA only")
@pytest.mark.parametrize("stochastic", [False, True])
def test_mxfp4_wgrad_operand_along_the_tokens_equals_the_reference(stochastic):
    """MXFP4's weight-gradient operands (blocks along the tokens, no RHT): the dispatch's
    transposed-load kernel (no transposed copy), round to nearest or stochastic, against the
    reference's quantize of the transposed fp32 operand with the same seed."""
    from megatron_fp4.kernels import quantize_along_tokens_fast

    spec = QuantSpec("fp4", "mxfp4", stochastic_rounding=stochastic)
    x = (torch.randn(4096, 1024, device="cuda") * torch.logspace(-3, 2, 1024, device="cuda")).to(torch.bfloat16)
    torch.manual_seed(3)  # the seed the dispatch draws ...
    fast = quantize_along_tokens_fast(x, spec, None, False, check_finite=False, name="x")
    torch.manual_seed(3)  # ... and the reference draws
    reference = quantize(x.float().t().contiguous(), spec)
    assert fast.shape == reference.shape == (1024, 4096) and fast.dtype == reference.dtype
    assert torch.equal(fast.data, reference.data) and torch.equal(fast.scale, reference.scale)
