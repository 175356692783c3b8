"""GEMM backends against the exact reference backend."""

import pytest
import torch

from conftest import relative_error, requires_cuda
from megatron_fp4.gemm import available_backends, get_backend
from megatron_fp4.gemm.hopper import HopperBackend
from megatron_fp4.kernels import quantize_fast
from megatron_fp4.quantize import QuantSpec, quantize

ROW = QuantSpec("fp4", "row")


def test_reference_is_always_there_and_auto_picks_it_on_cpu():
    assert "reference" in available_backends()
    if not torch.cuda.is_available():
        assert get_backend("auto").name == "reference"
        assert not HopperBackend.is_available()
        with pytest.raises(ValueError, match="'hopper' is not available"):
            get_backend("hopper")


@requires_cuda
@pytest.mark.skipif(not HopperBackend.is_available(), reason="needs sm90+ and torch._scaled_mm")
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
