"""FP4 Column/RowParallelLinear at TP=2 against local FP4 linears on the same shards."""

import pytest
import torch

from conftest import relative_error
from megatron_fp4.backward import GRAD_AMAX_STATE_SIZE

from . import dist_harness, layer_jobs


@pytest.mark.parametrize("recipe", ["paper", "nvfp4", "direct"])
def test_sharded_scale_semantics_at_tp2(tmp_path, recipe):
    results = dist_harness.run(layer_jobs.sharded_layers_job, recipe, tp=2, outdir=str(tmp_path))
    for rank_result in results:
        for kind in ("column", "row"):
            y, y_ref, gx, gx_ref = rank_result[kind]
            # same quantized operands, fp32 sums in another order (plus one activation-dtype cast)
            assert relative_error(y, y_ref) < 1e-5, (kind, recipe)
            assert relative_error(gx, gx_ref) < 1e-5, (kind, recipe)


FUSES = {"paper": True, "direct": True, "nvfp4": False, "mxfp4": False, "bf16": False}


def test_fp4_mlp_quantizes_inside_the_swiglu(tmp_path):
    """FP4MLP at TP=2 equals fc1 -> written-out SwiGLU -> fc2 (forward and all gradients) for the
    recipes that fuse, and leaves the others to upstream's path. Without CUDA both paths quantize
    the same activation (bit for bit forward; backward: megatron-core's SwiGLU-backward formula
    in fp32 vs autograd through silu in fp32, both rounded to bf16 once, then re-quantized by fc1's
    FP8 gradient quantizer, which turns rare one-ulp differences into a code step: 1e-2). On a GPU
    the fused kernel's activation may also differ by one bf16 ulp at ~1e-4 of the elements, which
    moves a few FP4 codes: 2e-2."""
    results = dist_harness.run(layer_jobs.fused_swiglu_mlp_job, list(FUSES), tp=2, outdir=str(tmp_path))
    for rank_results in results:
        for recipe, fuses in FUSES.items():
            result = rank_results[recipe]
            assert result["fused"] is fuses and result["fused_without_flag"] is False, recipe
            assert result["grad_amax_history"] == [(GRAD_AMAX_STATE_SIZE,)] * 2  # delayed output-gradient scaling's state
            if not fuses:
                continue
            for name, a, b in zip(("output", "input grad", "fc1 weight grad", "fc2 weight grad"), result["fused_run"], result["reference_run"]):
                bound = 2e-2 if torch.cuda.is_available() else (0 if name == "output" else 1e-2)
                assert relative_error(a, b) <= bound, (recipe, name, relative_error(a, b))


def test_fp4_column_linear_computes_the_rms_norm(tmp_path):
    """The FP4 ColumnParallel linear with the RMSNorm fused into it equals the norm written out then
    the linear, at TP=2 with and without sequence parallelism: the output, dx, the norm weight's
    (per-rank, with SP a partial sum marked for megatron-core's all-reduce) and the linear weight's
    gradients. Without CUDA both quantize the same activation (forward bit for bit; backward: the
    norm's backward formula in fp32 against autograd through the reference: 1e-4). On a GPU the
    statistics pass's sum order moves rare activations by one ulp and a few FP4 codes: 2e-2."""
    recipes = ["paper", "direct"]
    results = dist_harness.run(layer_jobs.fused_rms_norm_job, recipes, tp=2, outdir=str(tmp_path))
    for rank_results in results:
        for recipe in recipes:
            for mode, result in rank_results[recipe].items():
                assert result["sequence_parallel_mark"] is (mode == "sp=True")
                for name, a, b in zip(("output", "input grad", "norm weight grad", "weight grad"), result["fused_run"], result["reference_run"]):
                    bound = 2e-2 if torch.cuda.is_available() else (0 if name == "output" else 1e-4)
                    assert relative_error(a, b) <= bound, (recipe, mode, name, relative_error(a, b))
