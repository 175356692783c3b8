"""GEMM backends against the exact reference backend."""

import pytest
import torch

from conftest import relative_error, requires_cuda
from megatron_fp4.backward import fold_scale, quantize_grad_output
from megatron_fp4.gemm import available_backends, get_backend
from megatron_fp4.gemm.blackwell import BlackwellBackend
from megatron_fp4.gemm.hopper import HopperBackend
from megatron_fp4.kernels import quantize_fast
from megatron_fp4.linear import fp4_linear
from megatron_fp4.quantize import QuantSpec, quantize
from megatron_fp4.occ import OCCConfig
from megatron_fp4.recipe import get_recipe

ROW = QuantSpec("fp4", "row")
E5M2 = QuantSpec("fp8_e5m2", "tensor")
hopper_only = pytest.mark.skipif(not HopperBackend.is_available(), reason="needs sm90+ and torch._scaled_mm")


def test_reference_is_always_there_and_auto_picks_the_fastest_available():
    assert "reference" in available_backends()
    expected = "blackwell" if BlackwellBackend.is_available() else "hopper" if HopperBackend.is_available() else "reference"
    assert get_backend("auto").name == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'hopper' is not available"):
            get_backend("hopper")


def test_backend_override_from_the_environment(monkeypatch):
    monkeypatch.setenv("MEGATRON_FP4_GEMM_BACKEND", "reference")
    assert get_backend().name == "reference"
    monkeypatch.setenv("MEGATRON_FP4_GEMM_BACKEND", "nope")
    with pytest.raises(ValueError, match="unknown FP4 GEMM backend 'nope'"):
        get_backend()


def test_availability_is_asked_once_per_backend_not_per_call():
    """get_backend runs in every FP4 linear's forward: its hardware query is cached (it was a
    quarter of the linear's host time), and re-registering a name asks again."""
    from megatron_fp4.gemm import backend as backends
    from megatron_fp4.gemm.reference import ReferenceBackend

    asked = []

    class Counted(ReferenceBackend):
        name = "counted-test"

        @classmethod
        def is_available(cls) -> bool:
            asked.append(1)
            return True

    backends.register_backend("counted-test", Counted)
    try:
        for _ in range(5):
            assert get_backend("counted-test").name == "counted-test"
        assert len(asked) == 1
        backends.register_backend("counted-test", Counted)
        get_backend("counted-test")
        assert len(asked) == 2
    finally:
        backends._REGISTRY.pop("counted-test")
        backends._INSTANCES.pop("counted-test", None)


@requires_cuda
@hopper_only
@pytest.mark.parametrize("m, k, n", [(128, 256, 384), (4096, 4096, 11008), (8192, 5120, 5120)])
def test_hopper_fprop_equals_reference(m, k, n):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    x[:, :4] *= 20
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    xq, wq = quantize_fast(x, ROW), quantize_fast(w, ROW)
    assert xq.fp8 is not None  # the fused kernel ran and wrote the FP8 form
    reference = get_backend("reference").fprop(quantize(x, ROW), quantize(w, ROW))
    fast = get_backend("hopper").fprop(xq, wq)
    # exact FP4 products, fp32 accumulation in another order, then bf16 output: 2^-8 per element
    assert relative_error(fast, reference) < 2**-8
    assert ((fast - reference).abs() <= reference.abs() * 2**-7 + 1e-3 * reference.abs().max()).all()


@requires_cuda
@hopper_only
@pytest.mark.parametrize("m, k, n", [(128, 256, 384), (4096, 4096, 11008), (8192, 5120, 5120)])
def test_hopper_dgrad_wgrad_equal_reference(m, k, n):
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16) * 1e-3
    xq, wq = quantize_fast(x, ROW), quantize_fast(w, ROW)
    g_dgrad, g_wgrad = quantize_grad_output(g, E5M2, E5M2, fold_scale(wq), fold_scale(xq))
    hopper, reference = get_backend("hopper"), get_backend("reference")
    w_unit, x_unit = wq.without_scale(), xq.without_scale()
    assert hopper.supports_backward(g_dgrad, w_unit) and hopper.supports_backward(g_wgrad, x_unit)
    # exact FP8 x E2M1 products; fp32 accumulation in another order on the tensor cores
    dx_error = relative_error(hopper.dgrad(g_dgrad, w_unit), reference.dgrad(g_dgrad, w_unit))
    dw_error = relative_error(hopper.wgrad(g_wgrad, x_unit), reference.wgrad(g_wgrad, x_unit))
    print(f"hopper vs reference m={m} k={k} n={n}: dgrad {dx_error:.2e}, wgrad {dw_error:.2e}")
    assert dx_error < 2**-12 and dw_error < 2**-12


@requires_cuda
@hopper_only
@pytest.mark.parametrize("name", ["paper", "paper-inline", "direct", "nvfp4"])
def test_hopper_linear_forward_backward_equals_reference(name):
    """The whole FP4 linear on the fast path (fused quantizers, FP8 GEMMs, DGE kernel) against
    the reference backend on the same GPU: same quantized operands, so only accumulation order
    and fprop's output rounding differ (bf16 where PyTorch cannot write fp32 row-wise: 2^-8)."""
    recipe = get_recipe("paper", occ=OCCConfig(compensation="inline")) if name == "paper-inline" else get_recipe(name)
    x = torch.randn(2048, 1024, device="cuda", dtype=torch.bfloat16)
    x[:, :4] *= 30
    w = torch.randn(1536, 1024, device="cuda") * 0.02
    g = torch.randn(2048, 1536, device="cuda", dtype=torch.bfloat16)
    results = []
    for backend in ("reference", "hopper"):
        torch.manual_seed(1)  # stochastic rounding (nvfp4's gradients) draws the same numbers in both
        xd, wd = (t.detach().clone().requires_grad_() for t in (x, w))
        y = fp4_linear(xd, wd, None, recipe, backend=backend)
        y.backward(g)
        results.append((y.float(), xd.grad.float(), wd.grad))
    for what, ref, fast in zip(("y", "dX", "dW"), *results):
        error = relative_error(fast, ref)
        print(f"{name} {what}: hopper vs reference {error:.2e}")
        assert error < 2**-8, (name, what)
