"""Dry run of a training configuration: layout checks, parameters, memory per GPU, expected speed.

    python -m megatron_fp4.plan --config examples/configs/llama2_7b.sh --gpus 64
    python -m megatron_fp4.plan --gpus 8 --num-layers 32 --hidden-size 4096 ... (trainer flags)

Takes the trainer's own flags (or a config script that sets MODEL_ARGS / TRAIN_ARGS /
PARALLEL_ARGS / FP4_ARGS), checks the TP x PP x DP layout the way the trainer would (errors name
the flag), and prints:
  * parameters: total, and on the most loaded GPU (its pipeline stage, its tensor shard);
  * memory per GPU: bf16 weights, fp32 gradient buffer, fp32 master weights + Adam moments
    (sharded over DP with --use-distributed-optimizer), and activations of the micro-batches in
    flight (1F1B keeps PP of them on the first stage), with bf16 and with packed FP4 saved
    activations (the FP4 linear layers keep 4-bit codes + scales instead of bf16 inputs);
  * expected tokens/s from a measured per-GPU throughput (--achieved-tflops, model TFLOP/s per GPU
    as logged by a short run), via the standard 6·N + attention FLOPs per token.
Nothing is allocated: parameter counts come from the architecture's closed form, which a test
checks against megatron-core models built for real at small sizes.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from dataclasses import dataclass

from .training.arguments import parse_args, transformer_config_from_args

__all__ = ["ModelShape", "parameter_count", "memory_per_gpu", "main"]

GIB = 1024**3


def saved_bytes_per_element(recipe) -> float:
    """What an FP4 linear keeps for backward per input element: packed E2M1 codes (0.5 B) and
    their block scales, plus OCC's residual: FP8 (1 B dense), exact (8 B per clamped entry,
    2(1 - α) of them), hot channels (2 B x the channel share); inline OCC keeps the E4M3 operand
    instead of the codes (1 B). ``bench_linear`` measures 1.50 B for FP8 OCC and 0.66 B for
    exact OCC at α = 0.99. No recipe: paper's default."""
    from .recipe import FP4Recipe

    recipe = recipe or FP4Recipe.paper()
    spec = recipe.wgrad_input
    if not spec.is_quantized:
        return 2.0
    bytes_per_element = 0.5 if spec.dtype == "fp4" else 1.0
    bytes_per_element += {"nvfp4": 1 / 16, "nvfp4_2d": 1 / 256, "mxfp4": 1 / 32}.get(spec.granularity, 0.0)
    occ = recipe.occ
    if occ.inline:  # the E4M3 operand with its outliers, not packed codes, and no residual
        return 1.0
    if occ.enabled and occ.compensate and occ.compensate_wgrad:  # forward-only compensation keeps no residual
        if occ.compensation == "fp8":
            bytes_per_element += 1.0
        elif occ.compensation == "exact":
            bytes_per_element += 8 * 2 * (1 - occ.alpha)
        else:
            bytes_per_element += 2 * occ.hot_channel_fraction
    return bytes_per_element


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    query_groups: int
    kv_channels: int
    ffn: int
    vocab: int
    seq: int
    swiglu: bool
    bias: bool
    untied: bool
    learned_positions: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace, vocab: int) -> "ModelShape":
        heads = args.num_attention_heads
        return cls(
            layers=args.num_layers, hidden=args.hidden_size, heads=heads,
            query_groups=args.num_query_groups or heads,
            kv_channels=args.kv_channels or args.hidden_size // heads,
            ffn=args.ffn_hidden_size or 4 * args.hidden_size, vocab=vocab, seq=args.seq_length,
            swiglu=args.swiglu, bias=not args.disable_bias_linear,
            untied=args.untie_embeddings_and_output_weights,
            learned_positions=args.position_embedding_type == "learned_absolute",
        )

    def layer_parameters(self) -> int:
        h, q = self.hidden, self.heads * self.kv_channels
        kv = 2 * self.query_groups * self.kv_channels
        attention = h * (q + kv) + q * h
        mlp = h * self.ffn * (2 if self.swiglu else 1) + self.ffn * h
        biases = (q + kv + h + self.ffn * (2 if self.swiglu else 1) + h) if self.bias else 0
        norms = 2 * h  # RMSNorm weights (LayerNorm adds 2h of biases: close enough, < 0.01%)
        return attention + mlp + biases + norms

    def embedding_parameters(self) -> int:
        positions = self.seq * self.hidden if self.learned_positions else 0
        return self.vocab * self.hidden + positions

    def output_parameters(self) -> int:
        return self.vocab * self.hidden if self.untied else 0


def parameter_count(shape: ModelShape) -> int:
    """All parameters of the GPT model (embedding, layers, final norm, output layer)."""
    return shape.embedding_parameters() + shape.layers * shape.layer_parameters() + shape.hidden + shape.output_parameters()


def flops_per_token(shape: ModelShape) -> float:
    """Training FLOPs per token: 6 per weight (fwd + 2x bwd) plus attention's score/value products."""
    dense = parameter_count(shape) - shape.embedding_parameters()
    attention = 12 * shape.layers * shape.seq * shape.heads * shape.kv_channels / 2  # causal half
    return 6 * dense + attention


def activation_bytes_per_layer(shape: ModelShape, micro_batch: int, tp: int, sp: bool, fp4: bool, fp4_bytes: float | None = None) -> float:
    """Saved activations of one layer for one micro-batch on one TP rank (an estimate in the
    counting of Korthikanti et al. 2022; local attention materializes the softmax).

    Per token: the four linear-layer inputs (QKV and fc1 see the hidden state, proj the attention
    output, fc2 the FFN activation; 2 B each in bf16, ``fp4_bytes`` in FP4: ``saved_bytes_per_element``); norm inputs (2 x 2h B)
    and dropout masks (2 x h B); Q, K, V for the score GEMMs (2 x 3h/TP B); SwiGLU's two FFN
    halves (2 x 2 x FFN/TP B); the attention scores, softmax and its dropout mask (5 x heads x s / TP B).
    Without SP the hidden-sized tensors are replicated on every TP rank.
    """
    s, b, h = shape.seq, micro_batch, shape.hidden
    replicated = tp if sp else 1
    linear_inputs = (2 * h) / replicated + (shape.heads * shape.kv_channels + shape.ffn) / tp
    per_token = linear_inputs * ((fp4_bytes if fp4_bytes is not None else saved_bytes_per_element(None)) if fp4 else 2)
    per_token += (4 * h + 2 * h) / replicated
    per_token += 2 * 3 * shape.heads * shape.kv_channels / tp
    per_token += 2 * shape.ffn * (2 if shape.swiglu else 1) / tp
    per_token += 5 * shape.heads * s / tp
    return s * b * per_token


def memory_per_gpu(
    shape: ModelShape, tp: int, pp: int, dp: int, micro_batch: int, sp: bool, distributed_optimizer: bool,
    fp4_bytes: float | None = None, weight_cache: bool = False,
) -> dict:
    """Bytes on the most loaded GPU (the first pipeline stage holds the embedding and PP in-flight micro-batches)."""
    layers_per_stage = shape.layers // pp
    stage_params = layers_per_stage * shape.layer_parameters() + shape.embedding_parameters()
    norms = layers_per_stage * 2 * shape.hidden  # norm weights are replicated on every TP rank
    if pp == 1:
        stage_params += shape.output_parameters() + shape.hidden
        norms += shape.hidden
    local = (stage_params - norms) / tp + norms
    optimizer_shards = dp if distributed_optimizer else 1
    in_flight = pp  # 1F1B: the first stage holds PP micro-batches' activations at its peak
    activations = {
        fp4: layers_per_stage * in_flight * activation_bytes_per_layer(shape, micro_batch, tp, sp, fp4, fp4_bytes) for fp4 in (False, True)
    }
    # MEGATRON_FP4_WEIGHT_CACHE=1 keeps every linear weight's quantized forms for the whole step:
    # FP8 operand (1 B) + packed codes (0.5 B) + W's E4M3 form for FP8 OCC (1 B) per element
    cached_weights = 2.5 * layers_per_stage * shape.layer_parameters() / tp if weight_cache else 0.0
    logits = 4 * shape.seq * micro_batch * shape.vocab / tp if pp == 1 else 0
    return {
        "parameters on this GPU": local,
        "weights (bf16)": 2 * local,
        "gradients (fp32 buffer)": 4 * local,
        "optimizer (fp32 master + Adam m, v)": 12 * local / optimizer_shards,
        "activations, bf16": activations[False] + logits,
        "activations, FP4 packed": activations[True] + logits,
        "FP4 weight cache (opt-in)": cached_weights,
    }


def _config_flags(path: str) -> list[str]:
    """The flags a config script sets (it defines shell variables; bash expands them)."""
    script = f'set -e; source "{path}"; echo "$MODEL_ARGS $TRAIN_ARGS ${{PARALLEL_ARGS:-}} ${{FP4_ARGS:-}}"'
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"error: --config {path}: {result.stderr.strip() or 'could not be sourced'}")
    return shlex.split(result.stdout)


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m megatron_fp4.plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="a config script (examples/configs/*.sh); its flags come first, flags given here override")
    parser.add_argument("--gpus", type=_positive(int), required=True, help="GPUs in the job")
    parser.add_argument("--gpu-memory-gib", type=_positive(float), default=80.0, help="memory per GPU (H100 80 GB: 80)")
    parser.add_argument("--achieved-tflops", type=_positive(float), default=None, help="measured model TFLOP/s per GPU, for the speed estimate")
    parser.add_argument("--padded-vocab-size", type=_positive(int), default=32000, help="vocabulary (LLaMA-2: 32000)")
    return parser


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, rest = build_parser().parse_known_args(argv)
    flags = (_config_flags(options.config) if options.config else []) + rest
    args = parse_args(flags)
    transformer_config_from_args(args)  # the trainer's layout checks (TP vs heads/hidden/FFN, FP4 blocks)
    tp, pp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size
    if options.gpus % (tp * pp):
        raise SystemExit(f"error: --gpus {options.gpus} is not a multiple of --tensor-model-parallel-size {tp} x --pipeline-model-parallel-size {pp}")
    if args.num_layers % pp:
        raise SystemExit(f"error: --num-layers {args.num_layers} is not a multiple of --pipeline-model-parallel-size {pp}")
    dp = options.gpus // (tp * pp)
    if args.global_batch_size % (args.micro_batch_size * dp):
        raise SystemExit(
            f"error: --global-batch-size {args.global_batch_size} is not a multiple of --micro-batch-size "
            f"{args.micro_batch_size} x data-parallel size {dp} (= --gpus / (TP x PP))"
        )
    shape = ModelShape.from_args(args, options.padded_vocab_size)
    total = parameter_count(shape)
    from .weight_cache import enabled as weight_cache_enabled

    fp4 = args.fp4_quant_recipe is not None and args.fp4_quant_recipe.quantizes
    memory = memory_per_gpu(
        shape, tp, pp, dp, args.micro_batch_size, args.sequence_parallel, args.use_distributed_optimizer,
        fp4_bytes=saved_bytes_per_element(args.fp4_quant_recipe if fp4 else None), weight_cache=fp4 and weight_cache_enabled(),
    )
    static = sum(v for k, v in memory.items() if k not in ("parameters on this GPU", "activations, bf16", "activations, FP4 packed"))
    totals = {kind: static + memory[f"activations, {kind}"] for kind in ("bf16", "FP4 packed")}
    tokens_per_step = args.global_batch_size * args.seq_length
    print(f"layout: {options.gpus} GPUs = TP {tp} x PP {pp} x DP {dp}; micro-batch {args.micro_batch_size}, "
          f"{args.global_batch_size // (args.micro_batch_size * dp)} micro-batches per step per DP rank")
    print(f"parameters: {total:,} ({total / 1e9:.3f}B); {memory['parameters on this GPU']:,.0f} on the most loaded GPU")
    print(f"tokens: {tokens_per_step:,} per step, {tokens_per_step * args.train_iters / 1e9:.1f}B in {args.train_iters:,} steps")
    print(f"memory on the most loaded GPU (GiB; {options.gpu_memory_gib:g} available):")
    for key, value in memory.items():
        if key != "parameters on this GPU":
            print(f"  {key:<40} {value / GIB:8.2f}")
    for kind, value in totals.items():
        marker = "  <- this run" if (kind == "FP4 packed") == fp4 else ""
        print(f"  {'total with ' + kind + ' activations':<40} {value / GIB:8.2f}{marker}")
    used = totals["FP4 packed" if fp4 else "bf16"] / GIB
    if used > options.gpu_memory_gib:
        raise SystemExit(f"error: needs ~{used:.1f} GiB per GPU, more than --gpu-memory-gib {options.gpu_memory_gib:g}: "
                         "raise TP/PP, use --use-distributed-optimizer or a smaller --micro-batch-size")
    result = {"parameters": total, "dp": dp, "memory": memory, "totals": totals}
    if options.achieved_tflops:
        tokens_per_second = options.gpus * options.achieved_tflops * 1e12 / flops_per_token(shape)
        hours = tokens_per_step * args.train_iters / tokens_per_second / 3600
        print(f"expected: {tokens_per_second:,.0f} tokens/s ({tokens_per_second / options.gpus:,.0f} per GPU) at "
              f"{options.achieved_tflops:g} model TFLOP/s per GPU; {hours:,.1f} h for the run")
        result["tokens_per_second"] = tokens_per_second
    return result


if __name__ == "__main__":
    main()
