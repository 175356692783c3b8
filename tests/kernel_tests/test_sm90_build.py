"""The kernels' compiled-only branches build for Hopper (sm90) on any machine, with the resources
and instructions they are meant to have. The interpreter never runs these branches (the hardware
FP8 conversion, the tensor-core RHT, the persistent TMA GEMM), and a tile configuration that
exceeds shared memory fails only at launch on a GPU (session 9's first device call lost four tests
to one). The builds run in a subprocess without ``TRITON_INTERPRET`` (which this suite sets), as
``python -m megatron_fp4.kernels.sm90_build``."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

from megatron_fp4.kernels.sm90_build import HOPPER_SHARED_MEMORY, build_sm90, tools_available  # noqa: E402

pytestmark = pytest.mark.skipif(not tools_available(), reason="needs Triton's CUDA backend tools (cuobjdump)")


@pytest.fixture(scope="module")
def builds() -> dict:
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-m", "megatron_fp4.kernels.sm90_build"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_quantizers_convert_to_fp8_in_hardware_without_spilling(builds):
    for name in (
        "row quantizer", "inline OCC operand", "row quantizer from the SwiGLU pre-activation (7B fc2)",
        "inline OCC operand from the SwiGLU pre-activation (7B fc2)", "inline OCC operand of the RMSNorm (7B qkv / fc1 input)",
    ):
        assert builds[name]["uses"]["F2FP"] and builds[name]["stack_bytes"] == 0, (name, builds[name])


def test_rht_of_bf16_inputs_runs_on_tensor_cores(builds):
    for name in ("NVFP4 along the tokens, RHT on tensor cores, SR, BF16 values alone", "NVFP4 along the tokens, RHT on tensor cores"):
        assert builds[name]["uses"]["HMMA"] or builds[name]["uses"]["HGMMA"], (name, builds[name])


def test_recipe_kernel_builds_its_production_layouts_without_spilling(builds):
    for name in ("NVFP4 along the tokens, RHT on tensor cores, SR, BF16 values alone", "NVFP4 1x16 rows, SR, BF16 values alone", "NVFP4 16x16 tiles, BF16 values"):
        assert builds[name]["stack_bytes"] == 0 and builds[name]["shared_bytes"] <= HOPPER_SHARED_MEMORY, (name, builds[name])


def test_token_pair_quantizer_builds_every_default_layout(builds):
    pairs = {name: build for name, build in builds.items() if name.startswith("token pairs")}
    assert len(pairs) == 9  # NVFP4 / MXFP4, with and without the RHT and stochastic rounding; MXFP4's with BF16 values
    for name, build in pairs.items():
        assert build["shared_bytes"] <= HOPPER_SHARED_MEMORY and build["instructions"] > 0, (name, build)


def test_default_block_gemms_use_wgmma_and_fit_shared_memory(builds):
    gemms = {name: build for name, build in builds.items() if name.startswith("block GEMM")}
    assert len(gemms) == 4  # bf16 and fp32 outputs, B as stored and read transposed
    for name, build in gemms.items():
        assert build["uses"]["HGMMA"], (name, build)
        assert build["shared_bytes"] <= HOPPER_SHARED_MEMORY, (name, build)


def test_bad_arguments_are_named():
    from megatron_fp4.kernels import quantize_rows

    with pytest.raises(ValueError, match="_quantize_rows_kernel takes"):
        build_sm90(quantize_rows._quantize_rows_kernel, {"x_ptr": "*bf16"}, {"K": 64})
