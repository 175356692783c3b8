"""The one-launch tensor scale equals ``absmax_scale(partial.amax(), max)`` bit for bit
(interpreter on CPU, compiled on a GPU), zeros, NaN and Inf included."""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.kernels.tensor_scale import tensor_scale_from_partials, tensor_scale_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NVFP4_MAX = 6.0 * 448.0


@pytest.mark.parametrize("count", [1, 7, 1024, 3000])
def test_matches_the_reference_rule(count):
    partial = (torch.rand(count) * torch.logspace(-30, 30, count)).float().to(DEVICE)
    for max_value in (NVFP4_MAX, 448.0, 57344.0):
        fast, reference = tensor_scale_from_partials(partial, max_value), tensor_scale_reference(partial, max_value)
        assert fast.shape == reference.shape == () and torch.equal(fast, reference)


def test_all_zero_nan_and_inf():
    zeros = torch.zeros(100, device=DEVICE)
    assert tensor_scale_from_partials(zeros, NVFP4_MAX).item() == 1.0 == tensor_scale_reference(zeros, NVFP4_MAX).item()
    for bad in (float("nan"), float("inf")):
        partial = torch.rand(2000, device=DEVICE)
        partial[1500] = bad  # past the first block of 1024
        assert torch.isnan(tensor_scale_from_partials(partial, NVFP4_MAX)) and torch.isnan(tensor_scale_reference(partial, NVFP4_MAX))


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="fp32 tensor of partial maxima"):
        tensor_scale_from_partials(torch.zeros(0, device=DEVICE), NVFP4_MAX)
    with pytest.raises(ValueError, match="fp32"):
        tensor_scale_from_partials(torch.zeros(4, dtype=torch.float16, device=DEVICE), NVFP4_MAX)
