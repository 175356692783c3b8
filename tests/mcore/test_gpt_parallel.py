"""A small LLaMA-style GPTModel with the FP4 spec under TP, TP+SP and PP (gloo on CPU, NCCL on GPUs).

Every parallel run loads the same TP=1 weights through megatron-core's distributed checkpointing
(which reshards them) and writes its gradients back the same way, so all runs are compared as full
tensors by parameter name.
"""

import pytest
import torch

from conftest import relative_error

from . import dist_harness, gpt_jobs


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """TP=1/PP=1 runs of `paper` and `bf16`: weights, loss, gradients."""
    root = tmp_path_factory.mktemp("gpt")
    out = {}
    for recipe in ("paper", "bf16"):
        weights, grads = str(root / f"{recipe}_weights"), str(root / f"{recipe}_grads_tp1")
        (result,) = dist_harness.run(gpt_jobs.reference_job, recipe, weights, grads, outdir=str(root / f"ref_{recipe}"))
        out[recipe] = dict(weights=weights, grads=grads, loss=result["loss"])
    out["root"] = root
    return out


def run_parallel(reference, recipe, tp, pp, sequence_parallel=False):
    root = reference["root"]
    tag = f"{recipe}_tp{tp}_pp{pp}{'_sp' if sequence_parallel else ''}"
    grads_dir = str(root / f"{tag}_grads")
    results = dist_harness.run(
        gpt_jobs.parallel_job, recipe, reference[recipe]["weights"], grads_dir, sequence_parallel,
        tp=tp, pp=pp, outdir=str(root / tag),
    )
    loss = [r["loss"] for r in results if r["loss"] is not None][0]
    (ref_grads, grads) = dist_harness.run(
        gpt_jobs.read_grads_job, recipe, [reference[recipe]["grads"], grads_dir], outdir=str(root / f"{tag}_read")
    )[0]
    return loss, ref_grads, grads


def grads_of(reference, recipe):
    """TP=1 gradients of a reference run, as full tensors."""
    root = reference["root"]
    return dist_harness.run(gpt_jobs.read_grads_job, recipe, [reference[recipe]["grads"]], outdir=str(root / f"read_{recipe}"))[0][0]


def grad_errors(ref_grads, grads):
    return {name: relative_error(grads[name], ref_grads[name]) for name in ref_grads}


def test_tp1_runs_and_loss_is_sane(reference):
    # untrained model on 128 tokens: cross-entropy near ln(128) = 4.85
    assert 4.0 < reference["paper"]["loss"] < 6.0 and 4.0 < reference["bf16"]["loss"] < 6.0


def test_pipeline_parallel_matches_tp1(reference):
    # PP only moves layers between ranks: the same GEMMs on the same operands, fp32 roundoff only
    loss, ref_grads, grads = run_parallel(reference, "paper", tp=1, pp=2)
    assert abs(loss - reference["paper"]["loss"]) < 1e-5
    assert max(grad_errors(ref_grads, grads).values()) < 1e-4


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2_sp"])
def test_tensor_parallel_bf16_matches_tp1(reference, sequence_parallel):
    # no quantization: TP only reorders fp32 sums
    loss, ref_grads, grads = run_parallel(reference, "bf16", tp=2, pp=1, sequence_parallel=sequence_parallel)
    assert abs(loss - reference["bf16"]["loss"]) < 1e-5
    assert max(grad_errors(ref_grads, grads).values()) < 1e-4


@pytest.mark.parametrize("sequence_parallel", [False, True], ids=["tp2", "tp2_sp"])
def test_tensor_parallel_fp4_matches_tp1_within_shard_scaling(reference, sequence_parallel):
    """Column-parallel layers quantize exactly as TP=1; row-parallel ones (attention projection,
    fc2) scale each K/2 shard on its own, a different but equally fine quantization. So TP=2 may
    differ from TP=1 by about one FP4 quantization error of those layers, and no more: the bound
    is the gap between FP4 and unquantized training at TP=1 on the same weights."""
    loss, ref_grads, grads = run_parallel(reference, "paper", tp=2, pp=1, sequence_parallel=sequence_parallel)
    fp4_gap = abs(reference["paper"]["loss"] - reference["bf16"]["loss"])
    assert abs(loss - reference["paper"]["loss"]) <= max(2 * fp4_gap, 1e-4)
    # per parameter: ‖g(TP=2) − g(TP=1)‖ ≤ 1.25 ‖g_FP4(TP=1) − g_unquantized(TP=1)‖ (measured ratios
    # 0.2-1.0: DGE's f'(W/s) makes row-parallel weight gradients as sensitive to the scale as to
    # quantization itself, column-parallel ones move ~4x less)
    tp2_error = grad_errors(ref_grads, grads)
    quantization_error = grad_errors(grads_of(reference, "bf16"), ref_grads)
    for name in tp2_error:
        assert tp2_error[name] <= 1.25 * quantization_error[name] + 1e-5, name


def test_bf16_preset_is_the_stock_local_spec_exactly(tmp_path):
    (results,) = dist_harness.run(gpt_jobs.stock_vs_bf16_job, outdir=str(tmp_path))
    stock_loss, stock_grads = results["stock"]
    bf16_loss, bf16_grads = results["bf16"]
    assert bf16_loss == stock_loss
    assert stock_grads.keys() == bf16_grads.keys()
    assert all(torch.equal(stock_grads[n], bf16_grads[n]) for n in stock_grads)
    assert results["bf16_attention"] == "DotProductAttention"


def test_sdpa_attention_equals_megatron_attention_forward_and_backward(tmp_path):
    """--attention-backend flash (torch SDPA) against megatron-core's DotProductAttention, causal
    with GQA (4 heads, 2 groups) and RoPE, in a whole model: the same function, so the loss and
    every gradient agree to fp32 rounding (measured ~1e-7 relative; bound 1e-5: two summation
    orders of the softmax over 32 keys and of the backward's reductions)."""
    (results,) = dist_harness.run(gpt_jobs.stock_vs_bf16_job, outdir=str(tmp_path))
    stock_loss, stock_grads = results["stock"]
    assert results["bf16_sdpa_attention"] == results["bf16_auto_attention"] == "SDPACoreAttention"
    for name in ("bf16_sdpa", "bf16_auto"):
        loss, grads = results[name]
        assert abs(loss - stock_loss) <= 1e-5 * abs(stock_loss)
        for parameter, grad in grads.items():
            assert relative_error(grad, stock_grads[parameter]) < 1e-5, parameter


def test_per_layer_overrides_and_high_precision_head(tmp_path):
    (default,) = dist_harness.run(gpt_jobs.layer_recipes_job, (1, 4), False, True, outdir=str(tmp_path / "a"))
    assert default["decoder.layers.0.self_attention.linear_qkv"] == ("FP4ColumnParallelLinear", "bf16")
    assert default["decoder.layers.3.mlp.linear_fc2"] == ("FP4RowParallelLinear", "bf16")
    assert default["decoder.layers.1.mlp.linear_fc1"] == ("FP4ColumnParallelLinear", "paper")
    assert default["decoder.layers.2.self_attention.linear_proj"] == ("FP4RowParallelLinear", "paper")
    assert default["output_layer"] == ("ColumnParallelLinear", None)  # the LM head stays high precision
    assert default["decoder.layers.0.input_layernorm"][0] == "RMSNorm"
    # with upstream's fused SwiGLU on, the FP4 layers' fc2 computes it inside its quantizer; BF16 layers keep upstream's MLP
    assert [default[f"decoder.layers.{i}.mlp"][0] for i in range(4)] == ["MLP", "FP4MLP", "FP4MLP", "MLP"]
    (with_head,) = dist_harness.run(gpt_jobs.layer_recipes_job, (), True, outdir=str(tmp_path / "b"))
    assert with_head["output_layer"] == ("FP4ColumnParallelLinear", "paper")


def test_rms_norms_fuse_into_the_fp4_linears_after_them(tmp_path):
    """Every FP4 layer's two RMSNorms (before QKV and fc1) are fused, BF16 layers keep theirs; the
    checkpoint keys do not change; the logits stay within FP4 rounding of upstream's norm (the
    written-out reference norm differs from torch's RMSNorm in the last bit of 1/rms, which moves a
    few FP4 codes: 2e-2 relative); a recomputed norm is not fused."""
    (result,) = dist_harness.run(gpt_jobs.fused_norm_conversion_job, outdir=str(tmp_path))
    assert result["fused"] == 6  # layers 2-4 of 4 (layer 1 is BF16), two norms each
    assert result["norms"]["decoder.layers.0.input_layernorm"] == "RMSNorm"
    assert [result["norms"][f"decoder.layers.{i}.{which}"] for i in (1, 2, 3) for which in ("input_layernorm", "pre_mlp_layernorm")] == ["FusedIntoLinearRMSNorm"] * 6
    assert result["keys_unchanged"]
    assert relative_error(result["after"], result["before"]) < 2e-2
    assert result["fused_when_recomputed"] == 0
