"""The row quantizers with the SwiGLU computed inside them (``swiglu=True``, issue 14 item 6).

Two claims, each tested on fresh random pre-activations:
* given the activation the kernel computed (``activation_out``), its operand equals the reference
  quantizer's of that activation bit for bit (plain rows, with a clamp, and OCC's inline operand);
* that activation equals ``fused_inputs.swiglu_reference`` within one ulp of the 16-bit dtype, at
  no more than 0.1% of the elements: both evaluate silu in fp32 and round once, but the kernel's
  fp32 exponential (``ex2.approx`` on a GPU, numpy in the interpreter) differs from PyTorch's in
  its last bits, which moves the rounded result only when it lies within ~1e-6 of a rounding
  boundary (expected share ~1e-4).
On CPU in Triton's interpreter (small shapes), compiled on a GPU (LLaMA widths).
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.fused_inputs import swiglu_reference  # noqa: E402
from megatron_fp4.kernels.quantize_rows import quantize_rows, quantize_rows_inline, quantize_rows_reference  # noqa: E402
from megatron_fp4.occ import quantize_with_inline_outliers_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(5, 2 * 96), (3, 2 * 1000)] if DEVICE == "cpu" else [(257, 2 * 5504), (1024, 2 * 11008), (64, 2 * 13824)]


def pre_activation(shape, dtype=torch.bfloat16):
    a = torch.randn(shape) * 2
    a[:, : shape[1] // 2 : 17] *= 8  # large gates: silu ~ identity, and outliers for OCC
    a[-1] = 0  # an all-zero activation row
    return a.to(dtype).to(DEVICE)


def assert_activation_close(activation, pre):
    reference = swiglu_reference(pre)
    assert activation.dtype == reference.dtype and activation.shape == reference.shape
    differs = activation != reference
    assert differs.float().mean() <= 1e-3, f"{int(differs.sum())} of {differs.numel()} activation elements differ"
    if differs.any():  # one ulp of the 16-bit value, at most
        ulp = torch.finfo(reference.dtype).eps * reference.float().abs()[differs].clamp_min(torch.finfo(reference.dtype).tiny)
        assert ((activation.float() - reference.float())[differs].abs() <= ulp * 1.0001).all()


def assert_identical(fast, ref):
    assert torch.equal(fast.data.view(torch.uint8), ref.data.view(torch.uint8))
    assert torch.equal(fast.scale, ref.scale)
    assert torch.equal(fast.fp8.view(torch.uint8), ref.fp8.view(torch.uint8))
    assert fast.shape == ref.shape and fast.dtype == ref.dtype


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_rows_from_pre_activation(shape, dtype):
    pre = pre_activation(shape, dtype)
    k = shape[1] // 2
    for block in (None, 256):  # whole rows, and the two-pass path (rows longer than the block)
        activation = torch.empty(shape[0], k, dtype=dtype, device=DEVICE)
        fast = quantize_rows(pre, block=block, swiglu=True, activation_out=activation)
        assert_activation_close(activation, pre)
        assert_identical(fast, quantize_rows_reference(activation))
        # without the activation written: the same operand
        assert_identical(quantize_rows(pre, block=block, swiglu=True), fast)


def test_rows_from_pre_activation_with_clamp():
    pre = pre_activation(SHAPES[0])
    bounds = torch.tensor([-3.0, 2.5], device=DEVICE)
    activation = torch.empty(pre.shape[0], pre.shape[1] // 2, dtype=pre.dtype, device=DEVICE)
    fast = quantize_rows(pre, bounds, swiglu=True, activation_out=activation)
    assert_activation_close(activation, pre)
    assert_identical(fast, quantize_rows_reference(activation, bounds))


@pytest.mark.parametrize("shape", SHAPES)
def test_inline_operand_from_pre_activation(shape):
    pre = pre_activation(shape)
    bounds = torch.tensor([-4.0, 4.0], dtype=pre.dtype, device=DEVICE)
    for block in (None, 256):
        activation = torch.empty(shape[0], shape[1] // 2, dtype=pre.dtype, device=DEVICE)
        fast = quantize_rows_inline(pre, bounds, block=block, swiglu=True, activation_out=activation)
        assert_activation_close(activation, pre)
        reference = quantize_with_inline_outliers_reference(activation, bounds[0], bounds[1])
        assert torch.equal(fast.data.view(torch.uint8), reference.data.view(torch.uint8))
        assert torch.equal(fast.scale, reference.scale)
        assert fast.shape == reference.shape and fast.outliers_e4m3


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match="even last dim"):
        quantize_rows(torch.zeros(2, 7, dtype=torch.bfloat16, device=DEVICE), swiglu=True)
    with pytest.raises(ValueError, match="activation_out"):
        quantize_rows(torch.zeros(2, 8, dtype=torch.bfloat16, device=DEVICE), swiglu=True, activation_out=torch.empty(2, 8, dtype=torch.bfloat16, device=DEVICE))
