"""The block-scaled FP4 GEMM (BF16 tensor cores) equals the reference GEMM (dequantize, fp32
matmul) up to the fp32 accumulation order: every product of two block-scaled E2M1 values is exact
in fp32, so the only difference is the order of the sums (bound 1e-5 relative, several hundred
terms). In Triton's interpreter on CPU (small shapes), compiled on a GPU (LLaMA shapes)."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from conftest import relative_error  # noqa: E402
from megatron_fp4.kernels.block_gemm import block_scaled_matmul, transpose_2d  # noqa: E402
from megatron_fp4.quantize import QuantSpec, quantize  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(48, 80, 64), (64, 32, 160)] if DEVICE == "cpu" else [(256, 512, 1024), (4096, 11008, 4096), (8192, 5120, 13824)]


def reference(a, b):
    return a.dequantize_2d().double() @ b.dequantize_2d().double().t()


@pytest.mark.parametrize("granularities", [("nvfp4", "nvfp4_2d"), ("nvfp4", "nvfp4"), ("mxfp4", "mxfp4")])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_the_reference_gemm(granularities, shape):
    m, n, k = shape
    x = (torch.randn(m, k) * torch.logspace(-2, 2, m)[:, None]).to(DEVICE)
    w = (torch.randn(n, k) * 0.05).to(DEVICE)
    a, b = quantize(x, QuantSpec("fp4", granularities[0])), quantize(w, QuantSpec("fp4", granularities[1]))
    result = block_scaled_matmul(a, b)
    assert relative_error(result, reference(a, b)) < 1e-5


def test_dgrad_with_transposed_tiles_equals_quantizing_the_transpose():
    n, k, m = 48, 64, 32
    w = (torch.randn(n, k) * 0.05).to(DEVICE)
    g = torch.randn(m, n).to(DEVICE)
    wq = quantize(w, QuantSpec("fp4", "nvfp4_2d"))
    transposed = transpose_2d(wq)
    assert torch.equal(transposed.dequantize_2d(), quantize(w.t().contiguous(), QuantSpec("fp4", "nvfp4_2d")).dequantize_2d())
    gq = quantize(g, QuantSpec("fp4", "nvfp4"))
    assert relative_error(block_scaled_matmul(gq, transposed), gq.dequantize_2d().double() @ wq.dequantize_2d().double()) < 1e-5


def test_bad_operands_are_refused():
    x = torch.randn(32, 64).to(DEVICE)
    with pytest.raises(ValueError, match="needs FP4 E2M1 operands"):
        block_scaled_matmul(quantize(x, QuantSpec("fp4", "row")), quantize(x, QuantSpec("fp4", "nvfp4")))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the hopper backend needs a CUDA GPU")
@pytest.mark.parametrize("name", ["nvfp4", "mxfp4"])
def test_block_recipes_on_the_hopper_backend_equal_the_reference(name):
    """The whole linear (fprop, dgrad, wgrad along the tokens) on the block-scaled GEMM vs the
    reference backend; stochastic rounding off so both draw nothing."""
    from megatron_fp4.gemm import available_backends
    from megatron_fp4.linear import fp4_linear
    from megatron_fp4.recipe import get_recipe

    if "hopper" not in available_backends():
        pytest.skip("needs sm90+")
    recipe = get_recipe(name)
    recipe = recipe.replace(
        dgrad_grad_output=QuantSpec("fp4", recipe.dgrad_grad_output.granularity),
        wgrad_grad_output=QuantSpec("fp4", recipe.wgrad_grad_output.granularity),
    )
    x = torch.randn(1024, 2048, device="cuda", dtype=torch.bfloat16)
    w = (torch.randn(4096, 2048, device="cuda") * 0.02).to(torch.bfloat16)
    g = torch.randn(1024, 4096, device="cuda", dtype=torch.bfloat16)
    results = []
    for backend in ("hopper", "reference"):
        xb, wb = x.clone().requires_grad_(), w.clone().requires_grad_()
        y = fp4_linear(xb, wb, None, recipe, backend=backend)
        y.backward(g)
        results.append((y.float(), xb.grad.float(), wb.grad.float()))
    for fast, slow in zip(*results):
        assert relative_error(fast, slow) < 2**-7  # fp32 sums in another order, bf16 outputs
