"""The NVFP4 training-recipe quantizer (16x16 tiles, along the tokens after the RHT, stochastic
rounding) against the PyTorch reference: bit for bit without the RHT (the same Philox numbers for
stochastic rounding, computed in the kernel from the same seed); with the RHT the 16-term sums run
in another order, so codes may differ on rounding boundaries only (bound: 1 in 1000 elements, each
by one grid step)."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.formats import unpack_codes  # noqa: E402
from .rht_bounds import assert_within_summation_order  # noqa: E402
from megatron_fp4.hadamard import apply_rht, rht_matrix  # noqa: E402
import triton.language as tl  # noqa: E402

from megatron_fp4.kernels.quantize_blocks import quantize_blocks  # noqa: E402
from megatron_fp4.kernels.quantize_nvfp4 import _philox_words, quantize_nvfp4, tensor_scales_with_rht  # noqa: E402
from megatron_fp4.quantize import QuantSpec, quantize  # noqa: E402
from megatron_fp4.stochastic import new_seed, philox_uniform, philox_words  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(64, 64), (96, 160)] if DEVICE == "cpu" else [(64, 64), (8192, 4096), (4096, 11008)]
NVFP4, TILES = QuantSpec("fp4", "nvfp4"), QuantSpec("fp4", "nvfp4_2d")
SR = QuantSpec("fp4", "nvfp4", stochastic_rounding=True)


def activation(shape, dtype=torch.bfloat16):
    x = torch.randn(shape) * torch.logspace(-3, 2, shape[1])[None, :]
    x[3, 5] = 200.0  # an outlier: its block's scale is coarse, the tensor scale follows it
    return x.to(dtype).to(DEVICE)


def assert_identical(fast, reference):
    assert torch.equal(fast.data, reference.data)
    assert torch.equal(fast.scale.view(torch.uint8), reference.scale.view(torch.uint8))
    assert torch.equal(fast.global_scale.reshape(()), reference.global_scale.reshape(()))
    assert fast.spec == reference.spec and tuple(fast.shape) == tuple(reference.shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_tiles_and_rows_match_the_reference(shape, dtype):
    x = activation(shape, dtype)
    assert_identical(quantize_nvfp4(x, tiles=True), quantize(x, TILES))
    assert_identical(quantize_nvfp4(x), quantize(x, NVFP4))


@pytest.mark.parametrize("shape", SHAPES)
def test_stochastic_rounding_with_the_same_seed_matches_the_reference(shape):
    x = activation(shape)
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(7))
    assert_identical(quantize_nvfp4(x, seed=seed), quantize(x, SR, seed=seed))
    assert not torch.equal(quantize_nvfp4(x, seed=seed).data, quantize_nvfp4(x, seed=seed + 1).data)


def test_stochastic_rounding_at_grid_points_ties_and_tiny_values_matches_the_reference():
    """Scales of exactly 1 (a block maximum of 6, the tensor maximum 6 x 448), so the kernel rounds
    the values as given: grid points, midpoints and their fp32 neighbours, values below 0.25 (the
    ceil(|q| 2^25) path), just below 1 and above 6, both signs; many draws per value."""
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    points = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, torch.tensor([1e-30, 1e-3, 0.1, 0.2499999, 0.25, 0.2500001, 0.99999994, 6.5, 100.0])])
    special = torch.cat([points, torch.nextafter(points, torch.full_like(points, 1e9)), torch.nextafter(points, torch.full_like(points, -1e9))])
    special = torch.cat([special, -special, torch.rand(200) * 6.0, torch.rand(100) * 0.25])
    rows, blocks = 32, 64  # ~30k draws: each special value ~60 times
    values = special[torch.randint(special.numel(), (rows, blocks, 15))]
    x = torch.cat([torch.full((rows, blocks, 1), 6.0), values.clamp(-6.0, 6.0)], dim=2).reshape(rows, blocks * 16)
    x[0, 0] = 6.0 * 448  # the tensor maximum: tensor scale 1; its own block's scale is 448
    x = x.to(DEVICE)
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(11))
    fast, reference = quantize_nvfp4(x, seed=seed), quantize(x, SR, seed=seed)
    assert float(fast.global_scale) == 1.0
    assert_identical(fast, reference)


@triton.jit
def _philox_probe(counter_ptr, seed_ptr, out_ptr, COUNT: tl.constexpr):
    offsets = tl.arange(0, COUNT)
    k0 = tl.load(seed_ptr).to(tl.uint32)
    k1 = tl.load(seed_ptr + 1).to(tl.uint32)
    words = _philox_words(tl.load(counter_ptr + offsets)[None, :], k0, k1, 1, 8 * COUNT)  # [1, 4 COUNT]
    draws = tl.reshape(tl.join(words & 0xFFFF, words >> 16), (1, 8 * COUNT))  # element 2j: word j's low half
    tl.store(out_ptr + tl.arange(0, 8 * COUNT)[None, :], draws.to(tl.float32) * 2.0**-16)


def test_in_kernel_generator_equals_the_reference_numbers():
    """The kernel's Philox numbers (both 16-bit halves of all four words, in element order),
    counters past 2^32 included, equal ``stochastic``'s PyTorch form."""
    counters = torch.tensor([0, 1, 2, 1000, 2**31 + 7, 2**32 - 1, 2**32, 2**32 + 3, 2**40 + 11, 2**33 - 1, 5, 6, 7, 8, 9, 10], dtype=torch.int64, device=DEVICE)
    seed = torch.tensor([2**31 - 2, 12345], dtype=torch.int64, device=DEVICE)
    out = torch.empty(128, dtype=torch.float32, device=DEVICE)
    _philox_probe[(1,)](counters, seed, out, COUNT=16)
    words = philox_words(counters, seed)
    expected = torch.stack((words & 0xFFFF, words >> 16), dim=-1).reshape(-1).to(torch.float32) * 2.0**-16
    assert torch.equal(out, expected)
    # and philox_uniform's element i is a draw of counter i // 8 (the first three counters are 0, 1, 2)
    assert torch.equal(philox_uniform(seed, (3, 8)).reshape(-1), expected[:24])


@pytest.mark.parametrize("shape", SHAPES)
def test_along_the_tokens_without_rht_is_the_transposed_quantization(shape):
    x = activation(shape)
    assert_identical(quantize_nvfp4(x, along_tokens=True), quantize(x.float().t().contiguous(), NVFP4))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("tensor_cores", [True, False] if DEVICE == "cuda" else [True])  # compiled BF16: tensor cores or fp32 FMAs
def test_along_the_tokens_with_rht_matches_up_to_summation_order(shape, stochastic, tensor_cores, monkeypatch):
    import megatron_fp4.kernels.quantize_nvfp4 as kernel

    monkeypatch.setattr(kernel, "TENSOR_CORE_RHT", tensor_cores)
    x = activation(shape)
    operand = apply_rht(x, 1234).t().contiguous()
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(3)) if stochastic else None
    spec = SR if stochastic else NVFP4
    reference = quantize(operand, spec, seed=seed)
    fast = quantize_nvfp4(x, along_tokens=True, rht=rht_matrix(1234), seed=seed)
    assert torch.allclose(fast.global_scale, reference.global_scale, rtol=1e-6, atol=0)
    assert_within_summation_order(fast, reference, operand.shape)


MXFP4, MXFP4_SR = QuantSpec("fp4", "mxfp4"), QuantSpec("fp4", "mxfp4", stochastic_rounding=True)


def assert_identical_mx(fast, reference):
    assert torch.equal(fast.data, reference.data) and torch.equal(fast.scale, reference.scale)
    assert fast.global_scale is None and fast.spec == reference.spec and tuple(fast.shape) == tuple(reference.shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stochastic", [False, True])
def test_mxfp4_layouts_match_the_reference(shape, stochastic):
    """block_format="mxfp4": 1x32 E8M0 blocks, along the rows and along the tokens (the weight-
    gradient operands, read transposed in place), round to nearest or stochastic: bit for bit."""
    x = activation(shape)
    x[5, :40] = 0.0  # all-zero blocks
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(5)) if stochastic else None
    spec = MXFP4_SR if stochastic else MXFP4
    assert_identical_mx(quantize_nvfp4(x, seed=seed, block_format="mxfp4"), quantize(x, spec, seed=seed))
    transposed = x.float().t().contiguous()
    assert_identical_mx(quantize_nvfp4(x, along_tokens=True, seed=seed, block_format="mxfp4"), quantize(transposed, spec, seed=seed))


def test_mxfp4_with_rht_matches_up_to_summation_order():
    x = activation(SHAPES[-1])
    operand = apply_rht(x, 77).t().contiguous()
    reference = quantize(operand, MXFP4)
    fast = quantize_nvfp4(x, along_tokens=True, rht=rht_matrix(77), block_format="mxfp4")
    differing = unpack_codes(fast.data) != unpack_codes(reference.data)
    assert differing.float().mean() < 1e-3 and (fast.scale != reference.scale).float().mean() < 1e-3


LAYOUTS = {  # name -> keyword arguments of quantize_nvfp4 (seeded layouts get a seed below)
    "nvfp4 rows": {}, "nvfp4 tiles": {"tiles": True}, "nvfp4 rows SR": {"stochastic": True},
    "nvfp4 tokens RHT SR": {"along_tokens": True, "rht": 1234, "stochastic": True}, "nvfp4 tokens RHT": {"along_tokens": True, "rht": 1234},
    "mxfp4 rows": {"block_format": "mxfp4"}, "mxfp4 tokens": {"along_tokens": True, "block_format": "mxfp4"},
    "mxfp4 tokens SR": {"along_tokens": True, "block_format": "mxfp4", "stochastic": True},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_tile_shape_gives_the_default_tiles_bits(layout):
    """The tile (rows, columns, warps) of a program is speed only: tiles larger than the tensor,
    ones that leave partial tiles at both edges, and the per-layout defaults write the same bytes."""
    options = dict(LAYOUTS[layout])
    if options.pop("stochastic", False):
        options["seed"] = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(11))
    if "rht" in options:
        options["rht"] = rht_matrix(options["rht"])
    x = activation((96, 160))
    default = quantize_nvfp4(x, **options)
    for tile in ((32, 32, 2), (32, 256, 4), (256, 32, 4)):
        other = quantize_nvfp4(x, tile=tile, **options)
        assert torch.equal(other.data, default.data) and torch.equal(other.scale.view(torch.uint8), default.scale.view(torch.uint8)), tile
        if default.global_scale is not None:
            assert torch.equal(other.global_scale, default.global_scale), tile


@pytest.mark.parametrize("along_tokens", [False, True])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_mxfp4_blocks_holding_nan_or_inf_are_nan_as_in_the_reference(along_tokens, bad):
    """A block holding NaN or Inf gets the E8M0 NaN byte 0xFF (the power-of-two multiplier the
    kernel uses instead of 1 / scale is NaN there, as the division's)."""
    x = activation((64, 64))
    x[2, 7] = bad
    x[40, 33] = -bad
    fast = quantize_nvfp4(x, along_tokens=along_tokens, block_format="mxfp4")
    operand = x.float().t().contiguous() if along_tokens else x
    reference = quantize(operand, MXFP4)
    assert_identical_mx(fast, reference)
    assert (fast.scale == 0xFF).sum() == 2


def test_bad_tiles_are_named():
    with pytest.raises(ValueError, match="powers of two >= 32"):
        quantize_nvfp4(torch.randn(64, 64).to(DEVICE), tile=(48, 32, 4))
    with pytest.raises(ValueError, match="powers of two >= 32"):
        quantize_nvfp4(torch.randn(64, 64).to(DEVICE), tile=(16, 64, 4))


def test_bad_shapes_and_arguments_are_named():
    with pytest.raises(ValueError, match="token dimension"):
        quantize_nvfp4(torch.randn(40, 64).to(DEVICE), along_tokens=True)
    with pytest.raises(ValueError, match="tiles"):
        quantize_nvfp4(torch.randn(40, 64).to(DEVICE), tiles=True)
    with pytest.raises(ValueError, match="RHT runs along the tokens"):
        quantize_nvfp4(torch.randn(64, 64).to(DEVICE), rht=rht_matrix(1))
    with pytest.raises(ValueError, match="seed must be two int64 words"):
        quantize_nvfp4(torch.randn(64, 64).to(DEVICE), seed=torch.tensor([1, 2], dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match="block_format"):
        quantize_nvfp4(torch.randn(64, 64).to(DEVICE), block_format="e8m0")
    with pytest.raises(ValueError, match="1x32 blocks only"):
        quantize_nvfp4(torch.randn(64, 64).to(DEVICE), tiles=True, block_format="mxfp4")
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_nvfp4(torch.randn(48, 64).to(DEVICE), along_tokens=True, block_format="mxfp4")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the linear's kernel dispatch runs on CUDA only")
def test_nvfp4_linear_with_the_kernel_equals_the_reference_quantizers(monkeypatch):
    """The whole nvfp4 linear with the fused quantizer switched on against the PyTorch quantizers:
    the same draws (seeded), so only the RHT's summation order differs (bound: bf16 outputs)."""
    from conftest import relative_error
    from megatron_fp4.linear import fp4_linear
    from megatron_fp4.recipe import get_recipe

    recipe = get_recipe("nvfp4")
    x = torch.randn(1024, 2048, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(4096, 2048, device="cuda") * 0.02).to(torch.bfloat16)
    g = torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16)
    results = []
    for enabled in ("0", "1"):
        monkeypatch.setenv("MEGATRON_FP4_NVFP4_KERNEL", enabled)
        torch.manual_seed(5)
        xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fp4_linear(xb, wb, None, recipe)
        y.backward(g)
        results.append((y.float(), xb.grad.float(), wb.grad.float()))
    for fused, reference in zip(*results):
        assert relative_error(fused, reference) < 2**-7


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stochastic", [False, True])
def test_both_tensor_scales_from_one_read_are_the_quantizers_own(shape, stochastic):
    """``tensor_scales_with_rht``: the scales of x (1x16 blocks) and of (R x)^T are bit for bit those
    the quantizers find by their own passes, and quantizing with them gives the same operands."""
    x = activation(shape)
    rht = rht_matrix(77)
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(8)) if stochastic else None
    plain_scale, rht_scale = tensor_scales_with_rht(x, rht, stochastic=stochastic)
    rows_alone = quantize_nvfp4(x, seed=seed)
    tokens_alone = quantize_nvfp4(x, along_tokens=True, rht=rht, seed=seed)
    assert torch.equal(plain_scale, rows_alone.global_scale) and torch.equal(rht_scale, tokens_alone.global_scale)
    assert torch.equal(plain_scale, quantize_blocks(x, NVFP4).global_scale)
    assert_identical(quantize_nvfp4(x, seed=seed, global_scale=plain_scale), rows_alone)
    assert_identical(quantize_nvfp4(x, along_tokens=True, rht=rht, seed=seed, global_scale=rht_scale), tokens_alone)
    assert_identical(quantize_blocks(x, NVFP4, global_scale=plain_scale), quantize_blocks(x, NVFP4))


def test_a_given_tensor_scale_of_the_wrong_kind_is_named():
    x = activation((64, 64))
    with pytest.raises(ValueError, match="global_scale is NVFP4's fp32 tensor scale"):
        quantize_nvfp4(x, global_scale=torch.ones(2, device=DEVICE))
    with pytest.raises(ValueError, match="global_scale is NVFP4's fp32 tensor scale"):
        quantize_nvfp4(x, block_format="mxfp4", global_scale=torch.ones((), device=DEVICE))
    with pytest.raises(ValueError, match="global_scale is NVFP4's fp32 tensor scale"):
        quantize_blocks(x, QuantSpec("fp4", "mxfp4"), global_scale=torch.ones((), device=DEVICE))
