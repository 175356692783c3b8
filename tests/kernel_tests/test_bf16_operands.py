"""The block quantizers' BF16 operand (``values=True``, ``QuantizedTensor.bf16``): for every layout
of the three block kernels it is exactly the written codes' values times their block scales (no
NVFP4 tensor scale) in BF16, bit for bit (each product of an E2M1 value and an E4M3 / E8M0 scale
is exact), NaN where the block's scale is NaN; and asking for it changes none of the codes, scales
or tensor scales. On CUDA the FP4 linear that feeds these operands to the block GEMM gives bit for
bit the results of the path that decodes the codes instead, and so does the nvfp4 linear that finds
the tensor scales of X / X^T and of dY / dY^T in one read each (against each quantizer's own pass).
With ``codes=False`` the kernels write the BF16 operand alone (the same bits, the same scales, no
codes), and its element values and dequantization read back from it equal the codes' own; the
linear asks for that for the operands nothing keeps (X in fprop, dY, dY^T)."""

import dataclasses
import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.hadamard import rht_matrix, rht_signs  # noqa: E402
from megatron_fp4.kernels.quantize_blocks import quantize_blocks  # noqa: E402
from megatron_fp4.kernels.quantize_nvfp4 import quantize_nvfp4  # noqa: E402
from megatron_fp4.kernels.quantize_tokens import quantize_along_tokens_bf16  # noqa: E402
from megatron_fp4.quantize import QuantSpec  # noqa: E402
from megatron_fp4.stochastic import new_seed  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(64, 64), (96, 160)] if DEVICE == "cpu" else [(96, 160), (8192, 4096)]


def activation(shape, nan_block: bool = False):
    x = torch.randn(shape) * torch.logspace(-3, 2, shape[1])[None, :]
    x[3, 5] = 200.0  # an outlier: a coarse block scale, the tensor scale follows it
    x[:32, 9] = 0.0  # an all-zero block along either dimension
    if nan_block:
        x[40, 33] = float("nan")
        x[50, 60] = float("inf")
    return x.to(torch.bfloat16).to(DEVICE)


def reference_bf16(q):
    """The codes' values times the block scales (the tensor scale left out), in BF16."""
    unit = torch.ones((), device=q.data.device) if q.global_scale is not None else None
    return dataclasses.replace(q, global_scale=unit, bf16=None).dequantize_2d().to(torch.bfloat16)


def assert_values_of_codes(q):
    assert q.bf16 is not None and q.bf16.dtype == torch.bfloat16 and q.bf16.shape == (q.data.shape[0], q.data.shape[1] * 2)
    expected = reference_bf16(q)
    nan = torch.isnan(expected)
    assert torch.equal(torch.isnan(q.bf16), nan)
    assert torch.equal(q.bf16[~nan].view(torch.int16), expected[~nan].view(torch.int16))  # bits: -0.0 included


def assert_same_quantization(with_values, without):
    assert without.bf16 is None
    assert torch.equal(with_values.data, without.data)
    assert torch.equal(with_values.scale.view(torch.uint8), without.scale.view(torch.uint8))
    if without.global_scale is None:
        assert with_values.global_scale is None
    else:
        assert torch.equal(with_values.global_scale, without.global_scale)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("granularity", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("strided", [False, True])
def test_block_quantizer_writes_the_values_of_its_codes(shape, granularity, strided):
    x = activation(shape, nan_block=granularity == "mxfp4")
    if strided:  # rows of a wider tensor: the work items within rows
        x = torch.cat([x, x[:, :32]], dim=1)[:, : shape[1]]
    spec = QuantSpec("fp4", granularity)
    q = quantize_blocks(x, spec, values=True)
    assert_values_of_codes(q)
    assert_same_quantization(q, quantize_blocks(x, spec))


# (tiles, along_tokens, rht, stochastic, block_format): every layout of the recipe kernel
RECIPE_LAYOUTS = [
    (False, False, False, False, "nvfp4"),
    (False, False, False, True, "nvfp4"),  # dY for dgrad
    (True, False, False, False, "nvfp4"),  # W
    (False, True, False, False, "nvfp4"),
    (False, True, True, False, "nvfp4"),  # X^T
    (False, True, True, True, "nvfp4"),  # dY^T for wgrad
    (False, False, False, False, "mxfp4"),
    (False, False, False, True, "mxfp4"),
    (False, True, False, False, "mxfp4"),
]


def assert_values_only_is_the_same_operand(values_only, full):
    """The BF16 operand alone: no codes, the same BF16 bits, scales and tensor scale, and the
    element values and dequantization read back from it equal those of the codes (NaN blocks:
    NaN in both dequantizations)."""
    assert values_only.data is None and values_only.operand_shape == full.operand_shape and values_only.device == full.device
    assert torch.equal(values_only.bf16.view(torch.int16), full.bf16.view(torch.int16))
    assert torch.equal(values_only.scale.view(torch.uint8), full.scale.view(torch.uint8))
    assert (values_only.global_scale is None) == (full.global_scale is None)
    if full.global_scale is not None:
        assert torch.equal(values_only.global_scale, full.global_scale)
    finite = ~torch.isnan(full.bf16.float())
    assert torch.equal(values_only.element_values()[finite], full.element_values()[finite])
    assert torch.equal(values_only.dequantize_2d().nan_to_num(7.0), full.dequantize_2d().nan_to_num(7.0))
    assert values_only.nbytes == full.nbytes - full.data.numel() + full.bf16.numel() * 2


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("granularity", ["nvfp4", "mxfp4"])
def test_block_quantizer_writes_the_values_alone(shape, granularity):
    x = activation(shape, nan_block=granularity == "mxfp4")
    spec = QuantSpec("fp4", granularity)
    assert_values_only_is_the_same_operand(quantize_blocks(x, spec, values=True, codes=False), quantize_blocks(x, spec, values=True))
    with pytest.raises(ValueError, match="needs values=True"):
        quantize_blocks(x, spec, codes=False)


@pytest.mark.parametrize("tiles, along_tokens, rht, stochastic, block_format", RECIPE_LAYOUTS)
def test_recipe_kernel_writes_the_values_alone(tiles, along_tokens, rht, stochastic, block_format):
    x = activation(SHAPES[-1], nan_block=block_format == "mxfp4")
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(8)) if stochastic else None
    options = dict(tiles=tiles, along_tokens=along_tokens, rht=rht_matrix(99) if rht else None, seed=seed, block_format=block_format)
    assert_values_only_is_the_same_operand(quantize_nvfp4(x, values=True, codes=False, **options), quantize_nvfp4(x, values=True, **options))
    with pytest.raises(ValueError, match="needs values=True"):
        quantize_nvfp4(x, codes=False, **options)


@pytest.mark.parametrize("block_format", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_token_pair_kernel_writes_the_values_alone(block_format, stochastic):
    x = activation(SHAPES[-1], nan_block=block_format == "mxfp4")
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(9)) if stochastic else None
    options = dict(seed=seed, block_format=block_format)
    assert_values_only_is_the_same_operand(quantize_along_tokens_bf16(x, values=True, codes=False, **options), quantize_along_tokens_bf16(x, values=True, **options))
    with pytest.raises(ValueError, match="needs values=True"):
        quantize_along_tokens_bf16(x, codes=False, **options)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("tiles, along_tokens, rht, stochastic, block_format", RECIPE_LAYOUTS)
def test_recipe_kernel_writes_the_values_of_its_codes(shape, tiles, along_tokens, rht, stochastic, block_format):
    x = activation(shape, nan_block=block_format == "mxfp4")
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(5)) if stochastic else None
    options = dict(tiles=tiles, along_tokens=along_tokens, rht=rht_matrix(99) if rht else None, seed=seed, block_format=block_format)
    q = quantize_nvfp4(x, values=True, **options)
    assert_values_of_codes(q)
    assert_same_quantization(q, quantize_nvfp4(x, **options))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_format", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("rht, stochastic", [(False, False), (False, True), (True, True)])
def test_token_pair_kernel_writes_the_values_of_its_codes(shape, block_format, rht, stochastic):
    x = activation(shape, nan_block=block_format == "mxfp4" and not rht)
    seed = new_seed(DEVICE, torch.Generator(DEVICE).manual_seed(6)) if stochastic else None
    options = dict(rht_signs=rht_signs(99, device=DEVICE) if rht else None, seed=seed, block_format=block_format)
    q = quantize_along_tokens_bf16(x, values=True, **options)
    assert_values_of_codes(q)
    assert_same_quantization(q, quantize_along_tokens_bf16(x, **options))


@pytest.mark.skipif(DEVICE != "cuda", reason="the hopper backend and the dispatch run on CUDA only")
@pytest.mark.parametrize("recipe_name", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("alone", [True, False])
def test_linear_with_bf16_operands_equals_the_decoding_path(recipe_name, alone, monkeypatch):
    """Forward and both gradients bit for bit with and without the quantizers' BF16 operands (the
    same seeds, so the same stochastic roundings), and no BF16 operand kept for the backward."""
    import megatron_fp4.linear as linear
    from megatron_fp4.gemm import get_backend
    from megatron_fp4.gemm.hopper import HopperBackend
    from megatron_fp4.linear import FP4GemmState, fp4_linear
    from megatron_fp4.recipe import get_recipe

    monkeypatch.setattr(linear, "BF16_OPERANDS_ALONE", alone)

    recipe, backend = get_recipe(recipe_name), get_backend("hopper")
    x0 = activation((256, 512))
    w0 = (torch.randn(384, 512, device=DEVICE) * 0.02).to(torch.bfloat16)
    grad = torch.randn(256, 384, device=DEVICE).to(torch.bfloat16)

    def run():
        torch.manual_seed(3)
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = fp4_linear(x, w, None, recipe, backend)
        y.backward(grad)
        return y.detach(), x.grad, w.grad

    codeless = []  # per GEMM call: which operands came as BF16 values alone
    for method in ("fprop", "dgrad"):
        original = getattr(HopperBackend, method)

        def recording(self, a, b, out_dtype=torch.float32, _original=original):
            codeless.append((a.data is None, b.data is None))
            return _original(self, a, b, out_dtype)

        monkeypatch.setattr(HopperBackend, method, recording)
    with_values = run()
    # fprop: X alone (W keeps its codes: cached and saved), dgrad: dY alone, wgrad (an A B^T fprop): dY^T alone, X^T saved
    assert codeless == [(alone, False)] * 3
    monkeypatch.undo()
    state = FP4GemmState(recipe, backend)
    state.forward(x0, w0, torch.bfloat16)
    assert state.bf16_operands and state.x_saved.bf16 is None and state.w_saved.bf16 is None
    assert state.x_saved.data is not None and state.w_saved.data is not None
    monkeypatch.setattr(HopperBackend, "block_operands_as_bf16", False)
    decoded = run()
    for a, b in zip(with_values, decoded):
        assert torch.equal(a, b)


@pytest.mark.skipif(DEVICE != "cuda", reason="the fused kernels' dispatch runs on CUDA only")
def test_nvfp4_linear_with_shared_tensor_scales_equals_each_quantizers_own(monkeypatch):
    import megatron_fp4.linear as linear
    from megatron_fp4.recipe import get_recipe

    recipe = get_recipe("nvfp4")
    x0 = activation((256, 512))
    w0 = (torch.randn(384, 512, device=DEVICE) * 0.02).to(torch.bfloat16)
    grad = torch.randn(256, 384, device=DEVICE).to(torch.bfloat16)
    calls = []
    shared = linear.shared_nvfp4_tensor_scales

    def counted(*args):
        scales = shared(*args)
        calls.append(scales[0] is not None)
        return scales

    def run():
        torch.manual_seed(4)
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        y = linear.fp4_linear(x, w, None, recipe, "hopper")
        y.backward(grad)
        return y.detach(), x.grad, w.grad

    monkeypatch.setattr(linear, "shared_nvfp4_tensor_scales", counted)
    with_shared = run()
    assert calls == [True, True]  # X / X^T in the forward, dY / dY^T in the backward
    monkeypatch.setattr(linear, "shared_nvfp4_tensor_scales", lambda *args: (None, None))
    for a, b in zip(with_shared, run()):
        assert torch.equal(a, b)
