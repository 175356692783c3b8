"""The block-scaled FP4 GEMM (BF16 tensor cores) equals the reference GEMM (dequantize, fp32
matmul) up to the fp32 accumulation order: every product of two block-scaled E2M1 values is exact
in fp32, so the only difference is the order of the sums (bound 1e-5 relative, several hundred
terms). Both ways of forming the operands (``fused``, ``decoded``), W read transposed in place for
dgrad. In Triton's interpreter on CPU (small shapes), compiled on a GPU (LLaMA shapes)."""

import dataclasses
import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from conftest import relative_error  # noqa: E402
from megatron_fp4.kernels import block_gemm  # noqa: E402
from megatron_fp4.kernels.block_gemm import GemmConfig, block_scaled_matmul, decode_to_bf16, transpose_2d  # noqa: E402
from megatron_fp4.quantize import QuantSpec, quantize  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(48, 80, 64), (64, 32, 160)] if DEVICE == "cpu" else [(256, 512, 1024), (4096, 11008, 4096), (8192, 5120, 13824)]
METHODS = ["fused", "decoded"]


def reference(a, b):
    return a.dequantize_2d().double() @ b.dequantize_2d().double().t()


def operands(m, n, k, granularities):
    x = (torch.randn(m, k) * torch.logspace(-2, 2, m)[:, None]).to(DEVICE)
    w = (torch.randn(n, k) * 0.05).to(DEVICE)
    return quantize(x, QuantSpec("fp4", granularities[0])), quantize(w, QuantSpec("fp4", granularities[1]))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("granularities", [("nvfp4", "nvfp4_2d"), ("nvfp4", "nvfp4"), ("mxfp4", "mxfp4")])
@pytest.mark.parametrize("shape", SHAPES)
def test_equals_the_reference_gemm(granularities, shape, method):
    a, b = operands(*shape, granularities)
    result = block_scaled_matmul(a, b, method=method)
    assert relative_error(result, reference(a, b)) < 1e-5


@pytest.mark.parametrize("granularity", ["nvfp4", "nvfp4_2d", "mxfp4"])
def test_decoded_operand_is_exact(granularity):
    """E2M1 x block scale in BF16 equals the reference's fp32 values divided by the tensor scale."""
    q = quantize((torch.randn(64, 128) * torch.logspace(-3, 3, 64)[:, None]).to(DEVICE), QuantSpec("fp4", granularity))
    expected = q.dequantize_2d() / (q.global_scale if q.global_scale is not None else 1.0)
    decoded = decode_to_bf16(q)
    assert decoded.dtype == torch.bfloat16
    assert torch.equal(decoded.float(), expected.float().to(torch.bfloat16).float())
    assert torch.allclose(decoded.float(), expected.float(), rtol=2**-20, atol=0)


@pytest.mark.parametrize("method", METHODS)
def test_dgrad_reads_the_tiles_transposed_in_place(method):
    n, k, m = (48, 64, 32) if DEVICE == "cpu" else (4096, 11008, 2048)
    w = (torch.randn(n, k) * 0.05).to(DEVICE)
    g = torch.randn(m, n).to(DEVICE)
    wq = quantize(w, QuantSpec("fp4", "nvfp4_2d"))
    transposed = transpose_2d(wq)
    assert torch.equal(transposed.dequantize_2d(), quantize(w.t().contiguous(), QuantSpec("fp4", "nvfp4_2d")).dequantize_2d())
    gq = quantize(g, QuantSpec("fp4", "nvfp4"))
    expected = gq.dequantize_2d().double() @ wq.dequantize_2d().double()
    assert relative_error(block_scaled_matmul(gq, wq, b_transposed=True, method=method), expected) < 1e-5
    assert relative_error(block_scaled_matmul(gq, transposed, method=method), expected) < 1e-5


@pytest.mark.parametrize("granularity", ["mxfp4", "nvfp4"])
def test_dgrad_with_one_dimensional_weight_blocks_is_decoded(granularity):
    """MXFP4's dgrad: W [N, K] quantized in blocks along K, the GEMM reduces over N. Decoded to
    exact BF16, the blocks need not lie on the reduction dimension: equal to the reference
    (it fell back to the fp32 reference GEMM, 0.12x BF16 for the whole mxfp4 linear)."""
    from megatron_fp4.kernels.block_gemm import transposed_b_supported

    n, k, m = (64, 96, 32) if DEVICE == "cpu" else (4096, 11008, 2048)
    wq = quantize((torch.randn(n, k) * 0.05).to(DEVICE), QuantSpec("fp4", granularity))
    gq = quantize(torch.randn(m, n).to(DEVICE), QuantSpec("fp4", granularity))
    assert transposed_b_supported(wq, torch.float32, "decoded") and not transposed_b_supported(wq, torch.float32, "fused")
    expected = gq.dequantize_2d().double() @ wq.dequantize_2d().double()
    assert relative_error(block_scaled_matmul(gq, wq, b_transposed=True, method="decoded"), expected) < 1e-5


@pytest.mark.skipif(DEVICE == "cpu", reason="tile configurations matter only compiled")
@pytest.mark.parametrize("config", [GemmConfig(64, 64, 64, num_warps=4), GemmConfig(128, 256, 64), GemmConfig(256, 128, 64, num_stages=4)])
def test_tile_configurations_agree(config):
    a, b = operands(2048, 3072, 4096, ("nvfp4", "nvfp4_2d"))
    expected = reference(a, b)
    assert relative_error(block_scaled_matmul(a, b, config=config), expected) < 1e-5


@pytest.mark.parametrize("warp_specialize", [False, True] if DEVICE == "cuda" else [False])
@pytest.mark.parametrize("b_transposed", [False, True])
def test_persistent_decoded_gemm_equals_the_reference(b_transposed, warp_specialize):
    """The persistent form of the decoded GEMM (programs walk the output tiles; under the
    interpreter 3 programs over several tiles) gives the same numbers, fprop and dgrad layouts."""
    m, n, k = (96, 80, 64) if DEVICE == "cpu" else (4096, 11008, 4096)
    out_dtype = torch.bfloat16 if warp_specialize else torch.float32  # both output widths (their default tiles differ)
    config = dataclasses.replace(block_gemm.default_config(out_dtype), warp_specialize=warp_specialize)
    assert config.persistent
    a, b = operands(m, n, k, ("nvfp4", "nvfp4_2d"))
    if b_transposed:
        b = transpose_2d(b)  # [K, N]: read as B^T in place
        expected = a.dequantize_2d().double() @ b.dequantize_2d().double()
    else:
        expected = reference(a, b)
    result = block_scaled_matmul(a, b, out_dtype, b_transposed=b_transposed, method="decoded", config=config)
    assert result.dtype == out_dtype
    assert relative_error(result, expected) < (2**-8 if out_dtype == torch.bfloat16 else 1e-5)  # bf16: the output's rounding


def test_persistent_config_is_validated():
    with pytest.raises(ValueError, match="warp_specialize needs persistent"):
        GemmConfig(warp_specialize=True)


def test_bad_operands_are_refused():
    x = torch.randn(32, 64).to(DEVICE)
    with pytest.raises(ValueError, match="needs FP4 E2M1 operands"):
        block_scaled_matmul(quantize(x, QuantSpec("fp4", "row")), quantize(x, QuantSpec("fp4", "nvfp4")))
    with pytest.raises(ValueError, match="reduction size 96 .* multiple of its mxfp4 block size 32|reduction size"):
        block_scaled_matmul(quantize(x, QuantSpec("fp4", "nvfp4")), quantize(torch.randn(32, 96).to(DEVICE), QuantSpec("fp4", "nvfp4")))
    with pytest.raises(ValueError, match="b_transposed with the fused method needs 16x16 tiles"):
        block_scaled_matmul(quantize(x, QuantSpec("fp4", "nvfp4")), quantize(x, QuantSpec("fp4", "nvfp4")), b_transposed=True, method="fused")
    with pytest.raises(ValueError, match="method 'cublas'"):
        block_scaled_matmul(quantize(x, QuantSpec("fp4", "nvfp4")), quantize(x, QuantSpec("fp4", "nvfp4")), method="cublas")


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
