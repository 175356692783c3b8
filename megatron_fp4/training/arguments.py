"""Command line of ``python -m megatron_fp4.pretrain_gpt``: Megatron-LM's flag names + the FP4 group.

A Megatron-LM ``pretrain_gpt.py`` command line keeps working for every flag listed here; a
Megatron-LM flag this trainer does not support fails naming it (never silently ignored), and
so does any unknown flag.

FP4 flags. Upstream's meanings are kept: ``--fp4-format e2m1`` alone switches FP4 on with
``--fp4-recipe`` (default ``nvfp4``, as upstream); ``--fp4-param-gather`` is upstream's (not
supported here yet, so it fails); ``--first-last-layers-bf16`` with
``--num-layers-at-start-in-bf16`` / ``--num-layers-at-end-in-bf16`` as upstream. ``--fp4`` is our
shorthand for ``--fp4-format e2m1 --fp4-recipe paper``. Recipe knobs (``megatron_fp4.training.fp4_flags``,
shared with Megatron-LM's patched command line): ``--fp4-dge-k``, ``--no-fp4-dge``,
``--fp4-occ-alpha``, ``--no-fp4-occ``, ``--no-fp4-occ-compensation``, ``--fp4-occ-compensation``,
``--fp4-bf16-layers``, ...

Errors are found here, before torch.distributed starts, and printed once (by rank 0) rather than
as a traceback on every rank: flag combinations, the layout (TP/PP/heads/FFN divisibility, FP4
block sizes), the learning-rate schedule.
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

from megatron.core.transformer.enums import AttnBackend

from ..gemm import available_backends
from ..recipe import RECIPES, FP4Recipe
from . import cuda_graphs, fusions
from .fp4_flags import positive_int, add_bf16_layer_arguments, add_fp4_knob_arguments, bf16_layers, fp4_knob_conflict, fp4_knobs_given, recipe_with_knobs

__all__ = [
    "build_parser", "parse_args", "parse_model_args", "model_flags", "flag_value", "fp4_recipe_from_args",
    "transformer_config_from_args", "UNSUPPORTED_MEGATRON_FLAGS",
]

# Megatron-LM flags users commonly pass that this trainer does not implement (yet).
UNSUPPORTED_MEGATRON_FLAGS = {
    "--fp8-format": "FP8 training: use --fp4 ... or train in --bf16",
    "--fp4-param-gather": "keeping parameters in FP4 for the all-gather is not implemented",
    "--num-experts": "mixture-of-experts models",
    "--expert-model-parallel-size": "mixture-of-experts models",
    "--context-parallel-size": "context parallelism",
    "--num-layers-per-virtual-pipeline-stage": "the interleaved pipeline schedule",
    "--fp16": "fp16 with loss scaling: use --bf16",
    "--transformer-impl": "choosing the transformer implementation (the FP4 spec picks TE when importable)",
}



class _OnceParser(argparse.ArgumentParser):
    """Prints usage errors on rank 0 only: torchrun starts one parser per rank, and N copies of the
    same message bury it. Every rank still exits with status 2."""

    def error(self, message: str):
        if os.environ.get("RANK", "0") == "0":
            self.print_usage(sys.stderr)
            sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _join_negative_numbers(argv: list[str]) -> list[str]:
    """``--lr -1e-3`` -> ``--lr=-1e-3``: argparse takes '-1e-3' for an option (its negative-number
    test knows no exponents) and reports a missing value instead of the real problem."""
    joined, index = [], 0
    while index < len(argv):
        token = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else None
        if token.startswith("--") and "=" not in token and following is not None and following.startswith("-") and _is_number(following):
            joined.append(f"{token}={following}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_parser() -> argparse.ArgumentParser:
    parser = _OnceParser(
        prog="python -m megatron_fp4.pretrain_gpt", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    model = parser.add_argument_group("model (Megatron-LM names)")
    model.add_argument("--num-layers", type=positive_int, required=True)
    model.add_argument("--hidden-size", type=positive_int, required=True)
    model.add_argument("--num-attention-heads", type=positive_int, required=True)
    model.add_argument("--ffn-hidden-size", type=positive_int, default=None)
    model.add_argument("--kv-channels", type=positive_int, default=None)
    model.add_argument("--group-query-attention", action="store_true")
    model.add_argument("--num-query-groups", type=positive_int, default=None)
    model.add_argument("--seq-length", type=positive_int, required=True)
    model.add_argument("--max-position-embeddings", type=positive_int, default=None)
    model.add_argument("--swiglu", action="store_true")
    model.add_argument("--normalization", choices=["LayerNorm", "RMSNorm"], default="LayerNorm")
    model.add_argument("--norm-epsilon", type=float, default=1e-5)
    model.add_argument("--position-embedding-type", choices=["learned_absolute", "rope"], default="learned_absolute")
    model.add_argument("--rotary-base", type=int, default=10000)
    model.add_argument("--untie-embeddings-and-output-weights", action="store_true")
    model.add_argument("--disable-bias-linear", action="store_true")
    model.add_argument("--hidden-dropout", type=float, default=0.1)
    model.add_argument("--attention-dropout", type=float, default=0.1)
    model.add_argument("--init-method-std", type=float, default=0.02)
    model.add_argument(
        "--attention-backend", choices=[b.name for b in AttnBackend], default="auto",
        help="core attention: flash (torch SDPA, FlashAttention on CUDA), unfused/local (megatron-core's), "
        "fused (Transformer Engine), auto (TE's where installed, else flash)",
    )
    model.add_argument("--use-flash-attn", action="store_true", help="upstream's older spelling of --attention-backend flash")
    fusions.add_fusion_arguments(parser.add_argument_group("kernel fusions (Megatron-LM names; megatron_fp4.training.fusions)"))

    parallel = parser.add_argument_group("parallelism")
    parallel.add_argument("--tensor-model-parallel-size", type=positive_int, default=1)
    parallel.add_argument("--pipeline-model-parallel-size", type=positive_int, default=1)
    parallel.add_argument("--sequence-parallel", action="store_true")
    parallel.add_argument("--use-distributed-optimizer", action="store_true")

    training = parser.add_argument_group("training")
    training.add_argument("--micro-batch-size", type=positive_int, required=True)
    training.add_argument("--global-batch-size", type=positive_int, default=None)
    training.add_argument("--train-iters", type=positive_int, required=True)
    training.add_argument("--lr", type=float, required=True)
    training.add_argument("--min-lr", type=float, default=0.0)
    training.add_argument("--lr-decay-style", choices=["constant", "linear", "cosine", "inverse-square-root", "WSD"], default="linear")
    training.add_argument("--lr-warmup-iters", type=int, default=0)
    training.add_argument("--lr-decay-iters", type=int, default=None)
    training.add_argument("--weight-decay", type=float, default=0.01)
    training.add_argument("--adam-beta1", type=float, default=0.9)
    training.add_argument("--adam-beta2", type=float, default=0.999)
    training.add_argument("--adam-eps", type=float, default=1e-8)
    training.add_argument("--clip-grad", type=float, default=1.0)
    training.add_argument("--bf16", action="store_true")
    training.add_argument("--seed", type=int, default=1234)
    training.add_argument("--exit-interval", type=positive_int, default=None, help="stop (after saving) at this iteration")
    training.add_argument("--exit-duration-in-mins", type=float, default=None, help="stop (after saving) once training has run this many minutes")
    training.add_argument(
        "--check-for-nan-in-loss-and-grad", action=argparse.BooleanOptionalAction, default=True,
        help="stop with an error at the first iteration whose loss or gradient norm is NaN/Inf (default: on, as upstream)",
    )
    cuda_graphs.add_cuda_graph_arguments(training)

    data = parser.add_argument_group("data and tokenizer")
    data.add_argument("--data-path", nargs="+", default=None)
    data.add_argument("--mock-data", action="store_true", help="synthetic token sequences instead of --data-path (benchmarks, smoke tests)")
    data.add_argument("--split", default="969,30,1")
    data.add_argument(
        "--tokenizer-type", choices=["HuggingFaceTokenizer", "NullTokenizer"], default="HuggingFaceTokenizer",
        help="HuggingFaceTokenizer: a tokenizers JSON file given by --tokenizer-model (tools/preprocess_data.py writes one); "
        "NullTokenizer: --vocab-size ids and an end-of-document id (with --mock-data)",
    )
    data.add_argument("--tokenizer-model", default=None)
    data.add_argument(
        "--vocab-size", type=positive_int, default=None,
        help="HuggingFaceTokenizer: the padded embedding size to use (e.g. to resume at another TP); NullTokenizer: its vocabulary",
    )

    checkpoint = parser.add_argument_group("checkpointing")
    checkpoint.add_argument("--save", default=None)
    checkpoint.add_argument("--load", default=None)
    checkpoint.add_argument("--finetune", action="store_true", help="load only the model weights from --load (e.g. an imported checkpoint) and start at iteration 0")
    checkpoint.add_argument("--save-interval", type=positive_int, default=None)
    checkpoint.add_argument("--ckpt-step", type=int, default=None, help="load this iteration from --load instead of the tracker's")
    checkpoint.add_argument(
        "--override-opt_param-scheduler", action="store_true",
        help="on resume, take the learning-rate/weight-decay schedule from the flags (the step count from the checkpoint)",
    )
    checkpoint.add_argument(
        "--use-checkpoint-opt_param-scheduler", action="store_true",
        help="on resume, keep the checkpoint's schedule and ignore the schedule flags",
    )
    checkpoint.add_argument(
        "--override-fp4-recipe", action="store_true",
        help="on resume, continue with this run's FP4 recipe where it differs from the checkpoint's "
             "(e.g. switching the last steps to BF16); without it such a resume is refused",
    )
    checkpoint.add_argument(
        "--overwrite-checkpoints", action="store_true",
        help="allow saving over (or past) checkpoints in --save that this run did not resume from",
    )

    logging = parser.add_argument_group("logging and evaluation")
    logging.add_argument("--log-interval", type=positive_int, default=100)
    logging.add_argument("--eval-interval", type=positive_int, default=1000)
    logging.add_argument("--eval-iters", type=int, default=100)
    logging.add_argument("--tensorboard-dir", default=None)

    fp4 = parser.add_argument_group("FP4 (megatron-fp4)")
    fp4.add_argument("--fp4", action="store_true", help="shorthand for --fp4-format e2m1 --fp4-recipe paper")
    fp4.add_argument("--fp4-format", choices=["e2m1"], default=None, help="switches FP4 on (upstream flag)")
    fp4.add_argument("--fp4-recipe", choices=sorted(set(RECIPES) - {"bf16"}), default=None, help="default: nvfp4 (upstream), paper with --fp4")
    add_fp4_knob_arguments(fp4)
    add_bf16_layer_arguments(fp4)
    return parser


def _reject_unsupported(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    for token in argv:
        flag = token.split("=", 1)[0]
        if flag in UNSUPPORTED_MEGATRON_FLAGS:
            parser.error(f"{flag} is a Megatron-LM flag megatron-fp4 does not support: {UNSUPPORTED_MEGATRON_FLAGS[flag]}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and cross-check; errors name the flag and the numbers."""
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    _reject_unsupported(parser, argv)
    args = parser.parse_args(_join_negative_numbers(argv))
    args.argv = argv  # kept with checkpoints (args.json): tools rebuild the model from it
    if args.use_flash_attn:
        if args.attention_backend not in ("auto", "flash"):
            parser.error(f"--use-flash-attn contradicts --attention-backend {args.attention_backend}")
        args.attention_backend = "flash"
    if args.mock_data and args.data_path:
        parser.error("--mock-data and --data-path exclude each other")
    if args.tokenizer_type == "NullTokenizer" and not args.vocab_size:
        parser.error("--tokenizer-type NullTokenizer needs --vocab-size (its number of token ids)")
    if args.group_query_attention and args.num_query_groups is None:
        parser.error("--group-query-attention needs --num-query-groups")
    if args.num_query_groups is not None and not args.group_query_attention:
        parser.error("--num-query-groups needs --group-query-attention")
    knobs = fp4_knobs_given(args) + (["--fp4-recipe"] if args.fp4_recipe else []) + (["--first-last-layers-bf16"] if args.first_last_layers_bf16 else [])
    if not (args.fp4 or args.fp4_format) and knobs:
        parser.error(f"FP4 options were given without --fp4 or --fp4-format e2m1: {' '.join(knobs)}")
    args.global_batch_size = args.global_batch_size or args.micro_batch_size
    if args.global_batch_size % args.micro_batch_size:
        parser.error(f"--global-batch-size {args.global_batch_size} is not a multiple of --micro-batch-size {args.micro_batch_size}")
    if args.lr < 0:
        parser.error(f"--lr {args.lr:g} must not be negative")
    if args.min_lr < 0 or args.min_lr > args.lr:
        parser.error(f"--min-lr {args.min_lr:g} must be within 0..--lr {args.lr:g}")
    if args.lr_warmup_iters < 0:
        parser.error(f"--lr-warmup-iters {args.lr_warmup_iters} must not be negative")
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        parser.error("--override-opt_param-scheduler and --use-checkpoint-opt_param-scheduler contradict each other")
    if args.ckpt_step is not None and not args.load:
        parser.error("--ckpt-step needs --load")
    decay = args.lr_decay_iters or args.train_iters
    if args.lr_warmup_iters >= decay:
        which = "--lr-decay-iters" if args.lr_decay_iters else "--train-iters"
        parser.error(f"--lr-warmup-iters {args.lr_warmup_iters} must be smaller than {which} {decay} (the decay needs steps after warm-up)")
    if args.sequence_parallel and args.tensor_model_parallel_size == 1:
        parser.error("--sequence-parallel needs --tensor-model-parallel-size > 1")
    conflict = fp4_knob_conflict(args, args.num_layers)
    if conflict:
        parser.error(conflict)
    try:
        args.fp4_quant_recipe = fp4_recipe_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    for error in (cuda_graphs.check(args), fusions.check(args)):
        if error:
            parser.error(error)
    if args.fp4_gemm_backend not in (None, "auto") and args.fp4_gemm_backend not in available_backends():
        parser.error(f"--fp4-gemm-backend {args.fp4_gemm_backend} is not available on this machine; available: {available_backends()}")
    if args.num_layers % args.pipeline_model_parallel_size:
        parser.error(f"--pipeline-model-parallel-size {args.pipeline_model_parallel_size} does not divide --num-layers {args.num_layers}")
    try:  # the layout checks of the model config, before any process group exists
        transformer_config_from_args(args)
    except (ValueError, AssertionError) as error:
        parser.error(str(error) or type(error).__name__)
    return args


def fp4_recipe_from_args(args: argparse.Namespace) -> FP4Recipe | None:
    """The recipe the flags ask for, or None when FP4 is off (plain BF16 training)."""
    if not (args.fp4 or args.fp4_format):
        return None
    return recipe_with_knobs(args.fp4_recipe or ("paper" if args.fp4 else "nvfp4"), args)


def transformer_config_from_args(args: argparse.Namespace):
    """The model's FP4TransformerConfig (recipe `bf16` everywhere when FP4 is off)."""
    from ..megatron.config import FP4TransformerConfig

    dtype = torch.bfloat16 if args.bf16 else torch.float32
    recipe = args.fp4_quant_recipe or FP4Recipe.bf16()
    return FP4TransformerConfig(
        num_layers=args.num_layers,
        hidden_size=args.hidden_size,
        num_attention_heads=args.num_attention_heads,
        ffn_hidden_size=args.ffn_hidden_size,
        kv_channels=args.kv_channels,
        num_query_groups=args.num_query_groups,
        gated_linear_unit=args.swiglu,
        activation_func=F.silu if args.swiglu else F.gelu,
        normalization=args.normalization,
        layernorm_epsilon=args.norm_epsilon,
        add_bias_linear=not args.disable_bias_linear,
        hidden_dropout=args.hidden_dropout,
        attention_dropout=args.attention_dropout,
        init_method_std=args.init_method_std,
        tensor_model_parallel_size=args.tensor_model_parallel_size,
        pipeline_model_parallel_size=args.pipeline_model_parallel_size,
        sequence_parallel=args.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=args.bf16,
        fp4_quant_recipe=recipe,
        fp4_bf16_layers=bf16_layers(args, args.num_layers),
        attention_backend=AttnBackend[args.attention_backend],
        **fusions.config_fields(args),
    )


MODEL_FLAGS_WITH_VALUE = {
    "--num-layers", "--hidden-size", "--num-attention-heads", "--ffn-hidden-size", "--kv-channels", "--num-query-groups",
    "--seq-length", "--max-position-embeddings", "--normalization", "--norm-epsilon", "--position-embedding-type",
    "--rotary-base", "--init-method-std", "--tokenizer-model", "--tokenizer-type", "--vocab-size",
}
MODEL_SWITCHES = {"--group-query-attention", "--swiglu", "--untie-embeddings-and-output-weights", "--disable-bias-linear"}


def model_flags(argv: list[str]) -> list[str]:
    """The architecture flags of a trainer command line (parallelism, data, schedule and FP4 dropped)."""
    kept, index = [], 0
    while index < len(argv):
        flag = argv[index].split("=", 1)[0]
        if flag in MODEL_SWITCHES:
            kept.append(flag)
        elif flag in MODEL_FLAGS_WITH_VALUE:
            kept += [flag, argv[index].split("=", 1)[1]] if "=" in argv[index] else argv[index : index + 2]
            index += 0 if "=" in argv[index] else 1
        index += 1
    return kept


def parse_model_args(argv: list[str]) -> argparse.Namespace:
    """Only the model of a command line (a checkpoint's args.json, an imported model's flags),
    with placeholder training flags: a single-process TP=1 view of the architecture."""
    filler = ["--micro-batch-size", "1", "--train-iters", "1", "--lr", "0", "--hidden-dropout", "0", "--attention-dropout", "0"]
    return parse_args([*model_flags(argv), *filler])


def flag_value(argv: list[str], flag: str, default: str | None = None) -> str | None:
    """The value of ``flag`` in a command line (``--flag value`` or ``--flag=value``; the last wins)."""
    value = default
    for index, token in enumerate(argv):
        if token == flag and index + 1 < len(argv):
            value = argv[index + 1]
        elif token.startswith(flag + "="):
            value = token.split("=", 1)[1]
    return value
