"""The reference numerics on a CUDA device equal the CPU ones (skipped without CUDA)."""

import pytest
import torch

from conftest import relative_error, requires_cuda, without_stochastic_rounding
from megatron_fp4.linear import fp4_linear
from megatron_fp4.quantize import QuantSpec, quantize
from megatron_fp4.recipe import RECIPES, get_recipe

pytestmark = requires_cuda


@pytest.mark.parametrize("granularity", ["tensor", "row", "nvfp4", "mxfp4"])
def test_quantize_on_cuda_is_bit_identical_to_cpu(granularity):
    x = torch.randn(256, 512) * torch.logspace(-3, 3, 256)[:, None]
    spec = QuantSpec("fp4", granularity)
    cpu, gpu = quantize(x, spec), quantize(x.cuda(), spec)
    assert torch.equal(cpu.data, gpu.data.cpu())
    assert torch.equal(cpu.scale.float(), gpu.scale.float().cpu())


@pytest.mark.parametrize("name", list(RECIPES))
def test_fp4_linear_on_cuda_matches_cpu(name):
    recipe = without_stochastic_rounding(get_recipe(name))  # the two devices' generators differ
    x = torch.randn(512, 256)
    x[:, :4] *= 30
    w, g = torch.randn(384, 256) * 0.05, torch.randn(512, 384)
    results = []
    for device in ("cpu", "cuda"):
        xd, wd = (t.detach().clone().to(device).requires_grad_() for t in (x, w))
        y = fp4_linear(xd, wd, None, recipe, backend="reference")  # fast backends: test_gemm_backends
        y.backward(g.to(device))
        results.append([t.detach().cpu() for t in (y, xd.grad, wd.grad)])
    # identical quantized operands; fp32 GEMMs accumulate in different orders on the two devices
    for cpu_tensor, gpu_tensor in zip(*results):
        assert relative_error(gpu_tensor, cpu_tensor) < 1e-5, name
