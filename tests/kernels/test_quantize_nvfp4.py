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
from megatron_fp4.hadamard import apply_rht, rht_matrix  # noqa: E402
import triton.language as tl  # noqa: E402

from megatron_fp4.kernels.quantize_nvfp4 import _philox_uniform, quantize_nvfp4  # noqa: E402
from megatron_fp4.quantize import QuantSpec, quantize  # noqa: E402
from megatron_fp4.stochastic import new_seed, philox_first_word  # noqa: E402

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


@triton.jit
def _philox_probe(index_ptr, seed_ptr, out_ptr, COUNT: tl.constexpr):
    offsets = tl.arange(0, COUNT)
    k0 = tl.load(seed_ptr).to(tl.uint32)
    k1 = tl.load(seed_ptr + 1).to(tl.uint32)
    tl.store(out_ptr + offsets, _philox_uniform(tl.load(index_ptr + offsets), k0, k1))


def test_in_kernel_generator_equals_the_reference_numbers():
    """The kernel's Philox numbers, counters past 2^32 included, equal ``stochastic``'s PyTorch form."""
    index = torch.tensor([0, 1, 2, 1000, 2**31 + 7, 2**32 - 1, 2**32, 2**32 + 3, 2**40 + 11, 2**33 - 1, 5, 6, 7, 8, 9, 10], dtype=torch.int64, device=DEVICE)
    seed = torch.tensor([2**31 - 2, 12345], dtype=torch.int64, device=DEVICE)
    out = torch.empty(16, dtype=torch.float32, device=DEVICE)
    _philox_probe[(1,)](index, seed, out, COUNT=16)
    expected = (philox_first_word(index, seed) >> 8).to(torch.float32) * 2.0**-24
    assert torch.equal(out, expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_along_the_tokens_without_rht_is_the_transposed_quantization(shape):
    x = activation(shape)
    assert_identical(quantize_nvfp4(x, along_tokens=True), quantize(x.float().t().contiguous(), NVFP4))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("stochastic", [False, True])
def test_along_the_tokens_with_rht_matches_up_to_summation_order(shape, stochastic):
    x = activation(shape)
    operand = apply_rht(x, 1234).t().contiguous()
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(3)) if stochastic else None
    spec = SR if stochastic else NVFP4
    reference = quantize(operand, spec, seed=seed)
    fast = quantize_nvfp4(x, along_tokens=True, rht=rht_matrix(1234), seed=seed)
    assert torch.allclose(fast.global_scale, reference.global_scale, rtol=1e-6, atol=0)
    differing = unpack_codes(fast.data) != unpack_codes(reference.data)
    assert differing.float().mean() < 1e-3
    steps = (fast.dequantize_2d() - reference.dequantize_2d()).abs()[differing]
    grid_step = (reference.decode_scale() * 2).expand(operand.shape)[differing]  # the widest E2M1 gap is 2 units
    assert (steps <= grid_step * (1 + 1e-6)).all()


def test_bad_shapes_and_arguments_are_named():
    with pytest.raises(ValueError, match="token dimension"):
        quantize_nvfp4(torch.randn(40, 64).to(DEVICE), along_tokens=True)
    with pytest.raises(ValueError, match="tiles"):
        quantize_nvfp4(torch.randn(40, 64).to(DEVICE), tiles=True)
    with pytest.raises(ValueError, match="RHT runs along the tokens"):
        quantize_nvfp4(torch.randn(64, 64).to(DEVICE), rht=rht_matrix(1))
    with pytest.raises(ValueError, match="seed must be two int64 words"):
        quantize_nvfp4(torch.randn(64, 64).to(DEVICE), seed=torch.tensor([1, 2], dtype=torch.int32, device=DEVICE))


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
