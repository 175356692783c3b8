import re
import shlex

import pytest

from megatron_fp4.recipe import FP4Recipe
from megatron_fp4.training.arguments import parse_args, transformer_config_from_args

LLAMA = (
    "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --ffn-hidden-size 128 --seq-length 32 "
    "--micro-batch-size 2 --global-batch-size 8 --train-iters 10 --lr 3e-4 --min-lr 3e-5 "
    "--lr-decay-style cosine --lr-warmup-iters 2 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 "
    "--clip-grad 1.0 --swiglu --normalization RMSNorm --position-embedding-type rope "
    "--untie-embeddings-and-output-weights --disable-bias-linear --group-query-attention --num-query-groups 2"
)


def parse(extra=""):
    return parse_args(shlex.split(f"{LLAMA} {extra}"))


def test_megatron_llama_command_line_parses():
    args = parse("--bf16 --tensor-model-parallel-size 2 --sequence-parallel --use-distributed-optimizer")
    assert args.fp4_quant_recipe is None  # no FP4 flag: BF16 training
    config = transformer_config_from_args(args)
    assert config.gated_linear_unit and config.normalization == "RMSNorm" and not config.add_bias_linear
    assert config.num_query_groups == 2 and config.sequence_parallel and config.fp4_quant_recipe.name == "bf16"


def test_fp4_flags_build_the_recipe():
    assert parse("--fp4").fp4_quant_recipe == FP4Recipe.paper()
    assert parse("--fp4-format e2m1").fp4_quant_recipe == FP4Recipe.nvfp4()  # upstream default recipe
    r = parse("--fp4 --fp4-dge-k 3 --fp4-occ-alpha 0.97 --no-fp4-occ-compensation").fp4_quant_recipe
    assert (r.dge.k, r.occ.alpha, r.occ.compensate) == (3.0, 0.97, False)
    assert not parse("--fp4 --no-fp4-dge --no-fp4-occ").fp4_quant_recipe.dge.enabled
    dge = parse("--fp4 --fp4-dge-k 3 --fp4-dge-max-derivative 5").fp4_quant_recipe.dge  # issue 17: k and the clamp varied
    assert (dge.enabled, dge.k, dge.max_derivative) == (True, 3.0, 5.0)
    assert parse("--fp4 --fp4-recipe bf16_dge --fp4-dge-max-derivative 2").fp4_quant_recipe.dge.max_derivative == 2.0
    assert parse("--fp4-format e2m1 --fp4-recipe mxfp4").fp4_quant_recipe.name == "mxfp4"
    config = transformer_config_from_args(parse("--fp4 --fp4-bf16-layers 1 4"))
    assert [config.fp4_recipe_for_layer(i).name for i in (1, 2, 4)] == ["bf16", "paper", "bf16"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ("--fp8-format hybrid", "--fp8-format is a Megatron-LM flag megatron-fp4 does not support"),
        ("--num-experts=8", "--num-experts is a Megatron-LM flag"),
        ("--fp4 --fp4-param-gather", "--fp4-param-gather is a Megatron-LM flag"),
        ("--no-such-flag 1", "unrecognized arguments: --no-such-flag"),
        ("--fp4-recipe paper", "FP4 options were given without --fp4"),
        ("--fp4 --fp4-occ-alpha 1.5", "--fp4-occ-alpha: must be in"),
        ("--fp4 --fp4-bf16-layers 9", "--fp4-bf16-layers \\[9\\]: layers are 1..4"),
        ("--global-batch-size 7", "--global-batch-size 7 is not a multiple of --micro-batch-size 2"),
        ("--lr-warmup-iters 10", "--lr-warmup-iters 10 must be smaller than --train-iters 10"),
        ("--fp4 --fp4-gemm-backend hopper", "--fp4-gemm-backend hopper is not available on this machine"),
        ("--fp4 --fp4-dge-k 0.5", "--fp4-dge-k 0.5: must be >= 1"),
        ("--fp4 --fp4-dge-max-derivative 0.5", "--fp4-dge-max-derivative 0.5: must be >= 1"),
        ("--fp4 --no-fp4-dge --fp4-dge-max-derivative 2", "--fp4-dge-max-derivative and --no-fp4-dge contradict each other"),
        ("--fp4-dge-max-derivative 2", "FP4 options were given without --fp4"),
        ("--fp4-grad-amax delayed", "FP4 options were given without --fp4 or --fp4-format e2m1: --fp4-grad-amax"),
        ("--fp4 --fp4-grad-amax-margin 1", "--fp4-grad-amax-margin applies to --fp4-grad-amax delayed"),
        ("--fp4 --fp4-grad-amax delayed --fp4-grad-amax-margin 12", "--fp4-grad-amax-margin\\); allowed: integers 0 to 8"),
        ("--lr-decay-style cosinus", "invalid choice: 'cosinus'"),
        ("--tokenizer-type GPT2BPETokenizer", "--tokenizer-type: invalid choice: 'GPT2BPETokenizer'"),
    ],
)
def test_bad_command_lines_fail_naming_the_flag(extra, message, capsys):
    with pytest.raises(SystemExit):
        parse(extra)
    assert re.search(message, capsys.readouterr().err)


def test_block_recipe_switches(capsys):
    recipe = parse("--fp4-format e2m1 --fp4-recipe nvfp4 --no-fp4-rht --no-fp4-stochastic-rounding --no-fp4-2d-weight-blocks").fp4_quant_recipe
    assert not recipe.wgrad_hadamard and not recipe.wgrad_grad_output.stochastic_rounding and recipe.fprop_weight.granularity == "nvfp4"
    recipe = parse("--fp4-format e2m1 --fp4-recipe mxfp4 --fp4-rht --fp4-rht-seed 9 --fp4-stochastic-rounding").fp4_quant_recipe
    assert recipe.wgrad_hadamard and recipe.hadamard_seed == 9 and recipe.dgrad_grad_output.stochastic_rounding
    default = parse("--fp4-format e2m1 --fp4-recipe nvfp4").fp4_quant_recipe
    assert default.wgrad_hadamard and default.wgrad_grad_output.stochastic_rounding and default.fprop_weight.granularity == "nvfp4_2d"
    for flags, message in (("--fp4 --fp4-rht", "--fp4-rht applies to the block recipes"), ("--fp4-format e2m1 --fp4-recipe mxfp4 --no-fp4-2d-weight-blocks", "--fp4-2d-weight-blocks applies to --fp4-recipe nvfp4")):
        with pytest.raises(SystemExit):
            parse(flags)
        assert message in capsys.readouterr().err


GRAPH = "--cuda-graph-impl local --cuda-graph-scope full_iteration"


@pytest.mark.parametrize(
    "extra, message",
    [
        ("--cuda-graph-impl transformer_engine", "--cuda-graph-impl transformer_engine needs Transformer Engine modules"),
        ("--cuda-graph-impl local", "--cuda-graph-scope \\(none: megatron-core's per-layer graphs\\): this trainer supports --cuda-graph-scope full_iteration only"),
        ("--cuda-graph-impl local --cuda-graph-scope attn mlp", "--cuda-graph-scope attn mlp: this trainer supports"),
        ("--cuda-graph-scope full_iteration", "--cuda-graph-scope full_iteration needs --cuda-graph-impl local"),
        ("--enable-cuda-graph --cuda-graph-impl local --cuda-graph-scope full_iteration", "--enable-cuda-graph is the deprecated spelling"),
        (f"{GRAPH} --cuda-graph-warmup-steps -1", "--cuda-graph-warmup-steps -1 must not be negative"),
        (f"{GRAPH} --fp4 --fp4-health-interval 10", "--fp4-health-interval 10 cannot run inside a CUDA graph"),
        (f"{GRAPH} --fp4 --fp4-occ-compensation exact", "--fp4-occ-compensation exact sizes its outlier residual on the host"),
    ],
)
def test_cuda_graph_flags_we_cannot_run_fail_naming_the_flag(extra, message, capsys):
    with pytest.raises(SystemExit):
        parse(extra)
    assert re.search(message, capsys.readouterr().err)


def test_cuda_graph_flags_pass_their_checks(monkeypatch, capsys):
    """What is allowed gets as far as the device check (CI has no GPU); the deprecated spelling
    becomes --cuda-graph-impl local; the debug switch that syncs on the host is refused."""
    import torch

    from megatron_fp4.training import cuda_graphs

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    args = parse(f"--enable-cuda-graph --cuda-graph-scope full_iteration --fp4 --fp4-health-interval 0")
    assert args.cuda_graph_impl == "local" and cuda_graphs.enabled(args) and args.cuda_graph_warmup_steps == 3
    assert not cuda_graphs.enabled(parse("--fp4"))
    monkeypatch.setenv("MEGATRON_FP4_CHECK_FINITE", "1")
    with pytest.raises(SystemExit):
        parse(f"{GRAPH} --fp4")
    assert "MEGATRON_FP4_CHECK_FINITE=1" in capsys.readouterr().err


def test_rng_states_are_saved_as_tensors_with_or_without_graphs():
    """A graph-safe tracker holds torch.Generator objects; checkpoints store tensors, so a run
    saved with CUDA graphs resumes without them and back (the GPU test resumes both ways)."""
    import torch

    from megatron_fp4.training.cuda_graphs import rng_states_as

    generator = torch.Generator()
    generator.manual_seed(7)
    states = rng_states_as({"model-parallel-rng": generator, "plain": torch.get_rng_state()}, graphable=False)
    assert all(isinstance(state, torch.Tensor) for state in states.values())
    assert torch.equal(states["model-parallel-rng"], generator.get_state())
    assert all(isinstance(s, torch.Tensor) for s in rng_states_as(states, graphable=False).values())


def test_fusion_flags_follow_upstream_defaults(monkeypatch, capsys):
    """Upstream's spellings: SwiGLU and RoPE fusion on by default where the GPU kernels run (RoPE
    ours without TE), switched off by --no-*; cross-entropy fusion off unless asked for. On a
    machine without CUDA everything stays megatron-core's unfused code."""
    import torch
    from megatron.core.models.common.embeddings import rope_utils

    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", rope_utils.fused_apply_rotary_pos_emb)  # restored afterwards
    fields = lambda extra="": transformer_config_from_args(parse(extra))  # noqa: E731
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = fields()
    assert not config.bias_activation_fusion and not config.apply_rope_fusion and not config.cross_entropy_loss_fusion
    with pytest.raises(SystemExit):
        parse("--cross-entropy-loss-fusion")
    assert "--cross-entropy-loss-fusion needs a CUDA device" in capsys.readouterr().err

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    config = fields()
    assert config.bias_activation_fusion and config.apply_rope_fusion and not config.cross_entropy_loss_fusion
    assert rope_utils.fused_apply_rotary_pos_emb is not None  # TE's, or ours installed
    config = fields("--no-bias-swiglu-fusion --no-rope-fusion")
    assert not config.bias_activation_fusion and not config.apply_rope_fusion
    config = fields("--cross-entropy-loss-fusion")
    assert config.cross_entropy_loss_fusion and config.cross_entropy_fusion_impl == "native"
    assert not transformer_config_from_args(parse_args(shlex.split(LLAMA.replace("rope", "learned_absolute")))).apply_rope_fusion
    from megatron_fp4.megatron.specs import te_available

    if not te_available():
        with pytest.raises(SystemExit):
            parse("--cross-entropy-loss-fusion --cross-entropy-fusion-impl te")
        assert "--cross-entropy-fusion-impl te needs Transformer Engine" in capsys.readouterr().err
