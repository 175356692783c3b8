"""Checkpoint conversion: our torch_dist checkpoints <-> Hugging Face LLaMA, and packed FP4 export.

    python tools/convert_checkpoint.py export --load CKPT --output HF_DIR [--dtype bfloat16] [--force]
    python tools/convert_checkpoint.py export --load CKPT --output DIR --fp4-packed [--fp4-recipe paper]
    python tools/convert_checkpoint.py import --hf HF_DIR --save CKPT --tokenizer-model tokenizer.json

export: reads the checkpoint at whatever TP/PP it was saved with (megatron-core's
dist_checkpointing reshards to one process), rebuilding the model from the ``args.json`` the
trainer keeps next to its checkpoints (or from model flags given after ``--``). Writes
``config.json``, ``model*.safetensors`` (+ index when sharded) and the tokenizer files, loadable
with ``transformers.LlamaForCausalLM.from_pretrained`` offline. Mapping: Megatron's fused QKV
(per query group: its query heads, then one K and one V head) -> q/k/v_proj; the SwiGLU fc1
(gate rows, then up rows) -> gate/up_proj; vocabulary padding rows dropped; RoPE needs no
permutation (Megatron's default non-interleaved rotary is the Hugging Face convention).

import: the reverse, to a weights-only checkpoint (start training from it with ``--finetune``;
load it at any TP/PP). The vocabulary is padded to a multiple of 1024 (valid for TP up to 8) and
``args.json`` records the model flags, so the trainer and ``export`` rebuild the same model.

--fp4-packed: each linear weight quantized with the recipe's weight quantizer and stored as
packed 4-bit codes + scales; the layout is documented in ``megatron_fp4.tools.fp4_checkpoint``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch
from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

from ..training.arguments import flag_value, model_flags, parse_model_args
from .output_directory import check_output_directory, written_atomically

SUPPORTED = "LLaMA-style models only: --swiglu, --normalization RMSNorm, --position-embedding-type rope, --disable-bias-linear"
VOCAB_MULTIPLE = 1024  # padding that stays valid for TP 1, 2, 4, 8 (the trainer pads to 128 x TP)


def _check_supported(args) -> None:
    problems = [
        name for name, ok in (
            ("--swiglu", args.swiglu), ("--normalization RMSNorm", args.normalization == "RMSNorm"),
            ("--position-embedding-type rope", args.position_embedding_type == "rope"), ("--disable-bias-linear", args.disable_bias_linear),
        ) if not ok
    ]
    if problems:
        raise SystemExit(f"error: cannot convert this architecture to LLaMA: it lacks {', '.join(problems)} ({SUPPORTED})")


class _Single:
    """One local process with megatron's parallel state (TP = PP = 1), for loading and saving."""

    def __enter__(self):
        import socket

        import torch.distributed as dist
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from ..megatron import enable_cpu_runtime

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        enable_cpu_runtime()
        parallel_state.initialize_model_parallel(1, 1)
        model_parallel_cuda_manual_seed(0)
        return self

    def __exit__(self, *exc):
        import torch.distributed as dist
        from megatron.core import parallel_state

        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def _build(args, vocab_size: int | None = None):
    from ..training.arguments import transformer_config_from_args
    from ..training.tokenizer import BPETokenizer
    from ..training.trainer import build_model

    if vocab_size is not None:
        args.vocab_size = vocab_size
    if not args.tokenizer_model or not os.path.exists(args.tokenizer_model):
        raise SystemExit(f"error: --tokenizer-model {args.tokenizer_model}: no such file (give it after --)")
    tokenizer = BPETokenizer(args.tokenizer_model)
    return build_model(args, transformer_config_from_args(args), tokenizer), tokenizer


def read_checkpoint_flags(load: str, extra_flags: list[str]) -> tuple[list[str], list[str] | None]:
    """(model flags, the trainer's saved argv or None) of the latest checkpoint under ``load``,
    after checking that its files are whole; nothing is built yet."""
    from ..training.checkpointing import CheckpointError, checkpoint_directory, latest_iteration, read_run_args, verify_checkpoint

    try:
        iteration = latest_iteration(load) if os.path.isdir(load) else None
        if iteration is None:
            raise CheckpointError(f"--load {load}: no finished checkpoint there (latest_checkpointed_iteration.txt)")
        verify_checkpoint(checkpoint_directory(load, iteration))
        saved = read_run_args(load)
    except CheckpointError as error:
        raise SystemExit(f"error: {error}") from None
    if saved is None and not extra_flags:
        raise SystemExit(f"error: --load {load} has no args.json: give the model flags after --")
    return model_flags((saved or []) + extra_flags), saved


def load_megatron(load: str, extra_flags: list[str]):
    """(args, model, tokenizer) with the weights of the latest checkpoint under ``load`` (one process)."""
    from ..training.checkpointing import load_model_weights
    from ..training.resume import padded_vocab_size

    flags, saved = read_checkpoint_flags(load, extra_flags)
    args = parse_model_args(flags)
    _check_supported(args)
    vocab_size = None
    if args.vocab_size is None and saved is not None:  # the trainer padded for its own TP size
        from ..training.tokenizer import BPETokenizer

        if args.tokenizer_model and os.path.exists(args.tokenizer_model):
            trained = int(flag_value(saved, "--tensor-model-parallel-size", "1"))
            vocab_size = padded_vocab_size(BPETokenizer(args.tokenizer_model).vocab_size, trained)
    model, tokenizer = _build(args, vocab_size)
    try:
        load_model_weights(load, model)
    except (Exception, CheckpointException) as error:  # the files are whole (checked above): shapes or keys differ
        first_line = str(error).strip().splitlines()[-1][:300]
        raise SystemExit(f"error: --load {load} does not match the model flags {flags}: {first_line}") from None
    model.eval()
    return args, model, tokenizer


def _heads(args):
    heads = args.num_attention_heads
    groups = args.num_query_groups or heads
    head_dim = args.kv_channels or args.hidden_size // heads
    return heads, groups, head_dim


def megatron_to_hf(state: dict, args, vocab: int) -> dict[str, torch.Tensor]:
    """Our state dict -> Hugging Face LLaMA tensor names (vocabulary padding dropped)."""
    heads, groups, d = _heads(args)
    per_group = heads // groups
    out = {"model.embed_tokens.weight": state["embedding.word_embeddings.weight"][:vocab]}
    for layer in range(args.num_layers):
        prefix, hf = f"decoder.layers.{layer}.", f"model.layers.{layer}."
        qkv = state[prefix + "self_attention.linear_qkv.weight"].reshape(groups, (per_group + 2) * d, -1)
        out[hf + "self_attn.q_proj.weight"] = qkv[:, : per_group * d].reshape(heads * d, -1)
        out[hf + "self_attn.k_proj.weight"] = qkv[:, per_group * d : (per_group + 1) * d].reshape(groups * d, -1)
        out[hf + "self_attn.v_proj.weight"] = qkv[:, (per_group + 1) * d :].reshape(groups * d, -1)
        out[hf + "self_attn.o_proj.weight"] = state[prefix + "self_attention.linear_proj.weight"]
        gate, up = state[prefix + "mlp.linear_fc1.weight"].chunk(2, dim=0)
        out[hf + "mlp.gate_proj.weight"], out[hf + "mlp.up_proj.weight"] = gate, up
        out[hf + "mlp.down_proj.weight"] = state[prefix + "mlp.linear_fc2.weight"]
        out[hf + "input_layernorm.weight"] = state[prefix + "input_layernorm.weight"]
        out[hf + "post_attention_layernorm.weight"] = state[prefix + "pre_mlp_layernorm.weight"]
    out["model.norm.weight"] = state["decoder.final_layernorm.weight"]
    if args.untie_embeddings_and_output_weights:
        out["lm_head.weight"] = state["output_layer.weight"][:vocab]
    return {name: tensor.detach().cpu().contiguous() for name, tensor in out.items()}  # safetensors writes host memory


def hf_to_megatron(tensors: dict[str, torch.Tensor], args, padded_vocab: int) -> dict[str, torch.Tensor]:
    """Hugging Face LLaMA tensors -> our state dict names (vocabulary padded with zero rows)."""
    heads, groups, d = _heads(args)
    per_group = heads // groups

    def pad(weight):
        return torch.cat([weight, weight.new_zeros(padded_vocab - weight.shape[0], weight.shape[1])])

    out = {"embedding.word_embeddings.weight": pad(tensors["model.embed_tokens.weight"])}
    for layer in range(args.num_layers):
        prefix, hf = f"decoder.layers.{layer}.", f"model.layers.{layer}."
        q = tensors[hf + "self_attn.q_proj.weight"].reshape(groups, per_group * d, -1)
        k = tensors[hf + "self_attn.k_proj.weight"].reshape(groups, d, -1)
        v = tensors[hf + "self_attn.v_proj.weight"].reshape(groups, d, -1)
        out[prefix + "self_attention.linear_qkv.weight"] = torch.cat([q, k, v], dim=1).reshape((heads + 2 * groups) * d, -1)
        out[prefix + "self_attention.linear_proj.weight"] = tensors[hf + "self_attn.o_proj.weight"]
        out[prefix + "mlp.linear_fc1.weight"] = torch.cat([tensors[hf + "mlp.gate_proj.weight"], tensors[hf + "mlp.up_proj.weight"]])
        out[prefix + "mlp.linear_fc2.weight"] = tensors[hf + "mlp.down_proj.weight"]
        out[prefix + "input_layernorm.weight"] = tensors[hf + "input_layernorm.weight"]
        out[prefix + "pre_mlp_layernorm.weight"] = tensors[hf + "post_attention_layernorm.weight"]
    out["decoder.final_layernorm.weight"] = tensors["model.norm.weight"]
    if args.untie_embeddings_and_output_weights:
        out["output_layer.weight"] = pad(tensors["lm_head.weight"])
    return out


def hf_config(args, vocab: int, tokenizer, dtype: torch.dtype) -> dict:
    heads, groups, d = _heads(args)
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": args.hidden_size, "intermediate_size": args.ffn_hidden_size or 4 * args.hidden_size,
        "num_hidden_layers": args.num_layers, "num_attention_heads": heads, "num_key_value_heads": groups,
        "head_dim": d, "max_position_embeddings": args.max_position_embeddings or args.seq_length,
        "rms_norm_eps": args.norm_epsilon, "rope_theta": float(args.rotary_base), "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": not args.untie_embeddings_and_output_weights,
        "bos_token_id": tokenizer.eod, "eos_token_id": tokenizer.eod, "torch_dtype": str(dtype).removeprefix("torch."),
    }


def write_safetensors(tensors: dict[str, torch.Tensor], output: str, max_shard_bytes: int, metadata: dict | None = None) -> None:
    """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
    from safetensors.torch import save_file

    shards, current, size = [], {}, 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name], size = tensor, size + nbytes
    shards.append(current)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(output, "model.safetensors"), metadata=metadata or {"format": "pt"})
        return
    weight_map = {}
    for index, shard in enumerate(shards, 1):
        name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, os.path.join(output, name), metadata=metadata or {"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(os.path.join(output, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


def read_safetensors(directory: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(directory, "model.safetensors")):
        files = ["model.safetensors"]
    else:
        raise SystemExit(f"error: --hf {directory}: no model.safetensors or model.safetensors.index.json")
    tensors = {}
    for name in files:
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise SystemExit(f"error: --hf {directory}: {name} is missing (named by model.safetensors.index.json)")
        try:
            tensors.update(load_file(path))
        except Exception as error:  # safetensors raises its own error types for truncated or corrupted files
            raise SystemExit(f"error: --hf {path}: not a readable safetensors file ({type(error).__name__}: {error})") from None
    return tensors


def write_tokenizer(tokenizer, output: str) -> None:
    from ..training.tokenizer import write_hf_tokenizer_config

    shutil.copy(tokenizer.path, os.path.join(output, "tokenizer.json"))
    write_hf_tokenizer_config(output, tokenizer)


def export(options, extra_flags: list[str]) -> None:
    check_output_directory(options.output, "--output", options.force, {"--load": options.load})
    with _Single():
        args, model, tokenizer = load_megatron(options.load, extra_flags)
        state = {k: v for k, v in model.state_dict().items() if not k.endswith("_extra_state")}
        vocab = tokenizer.vocab_size
        tensors = megatron_to_hf(state, args, vocab)
    dtype = getattr(torch, options.dtype)
    config = hf_config(args, vocab, tokenizer, dtype)
    with written_atomically(options.output) as staging:
        write_tokenizer(tokenizer, staging)
        if options.fp4_packed:
            from .fp4_checkpoint import pack_state

            packed, metadata = pack_state(tensors, options.fp4_recipe, dtype)
            config["megatron_fp4"] = metadata
            write_safetensors(packed, staging, options.max_shard_bytes, {"format": "pt", "megatron_fp4": json.dumps(metadata)})
        else:
            write_safetensors({k: v.to(dtype) for k, v in tensors.items()}, staging, options.max_shard_bytes)
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(config, f, indent=1)
    print(f"exported {options.load} -> {options.output} ({sum(t.numel() for t in tensors.values()):,} parameters)")


def import_hf(options) -> None:
    from ..training.checkpointing import run_record, save_model_weights

    config_path = os.path.join(options.hf, "config.json")
    if not os.path.exists(config_path):
        raise SystemExit(f"error: --hf {options.hf}: no config.json")
    try:
        with open(config_path) as f:
            config = json.load(f)
    except ValueError as error:
        raise SystemExit(f"error: --hf {config_path}: not valid JSON ({error})") from None
    unsupported = {
        "model_type": config.get("model_type") != "llama", "hidden_act": config.get("hidden_act", "silu") != "silu",
        "attention_bias": bool(config.get("attention_bias")), "mlp_bias": bool(config.get("mlp_bias")),
        "rope_scaling": config.get("rope_scaling") not in (None, {}), "megatron_fp4 (packed FP4)": "megatron_fp4" in config,
    }
    if any(unsupported.values()):
        raise SystemExit(f"error: --hf {options.hf}: unsupported config.json options {[k for k, v in unsupported.items() if v]} ({SUPPORTED})")
    check_output_directory(options.save, "--save", options.force, {"--hf": options.hf})
    if not os.path.isfile(options.tokenizer_model):
        raise SystemExit(f"error: --tokenizer-model {options.tokenizer_model}: no such file")
    heads, groups = config["num_attention_heads"], config.get("num_key_value_heads", config["num_attention_heads"])
    vocab = config["vocab_size"]
    padded = -(-vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    flags = [
        "--num-layers", str(config["num_hidden_layers"]), "--hidden-size", str(config["hidden_size"]),
        "--num-attention-heads", str(heads), "--ffn-hidden-size", str(config["intermediate_size"]),
        "--kv-channels", str(config.get("head_dim") or config["hidden_size"] // heads),
        "--seq-length", str(options.seq_length or config["max_position_embeddings"]),
        "--max-position-embeddings", str(config["max_position_embeddings"]),
        "--norm-epsilon", str(config["rms_norm_eps"]), "--rotary-base", str(int(config.get("rope_theta", 10000))),
        "--swiglu", "--normalization", "RMSNorm", "--position-embedding-type", "rope", "--disable-bias-linear",
        "--vocab-size", str(padded), "--tokenizer-model", os.path.abspath(options.tokenizer_model),
    ]
    if groups != heads:
        flags += ["--group-query-attention", "--num-query-groups", str(groups)]
    if not config.get("tie_word_embeddings", False):
        flags.append("--untie-embeddings-and-output-weights")
    tensors = read_safetensors(options.hf)
    with _Single():
        args = parse_model_args(flags)
        model, _ = _build(args)
        try:
            state = hf_to_megatron(tensors, args, padded)
        except KeyError as error:
            raise SystemExit(f"error: --hf {options.hf}: tensor {error} is missing from its safetensors") from None
        expected = model.state_dict()
        missing = set(k for k in expected if not k.endswith("_extra_state")) - set(state)
        if missing:
            raise SystemExit(f"error: --hf {options.hf}: tensors missing for {sorted(missing)[:4]}")
        wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items() if v.shape != expected[k].shape]
        if wrong:
            raise SystemExit(f"error: --hf {options.hf}: tensors do not match its config.json: {wrong[:4]}")
        model.load_state_dict({**expected, **{k: v.to(expected[k].dtype) for k, v in state.items()}})
        with written_atomically(options.save) as staging:
            save_model_weights(staging, 0, model, run_record(flags, options.tokenizer_model))
    print(f"imported {options.hf} -> {options.save} (vocabulary {vocab} padded to {padded}); train from it with --load {options.save} --finetune --vocab-size {padded}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tools/convert_checkpoint.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    out = sub.add_parser("export", help="our checkpoint -> Hugging Face LLaMA directory")
    out.add_argument("--load", required=True, help="the trainer's --save directory")
    out.add_argument("--output", required=True)
    out.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    out.add_argument("--max-shard-bytes", type=int, default=5 * 1024**3)
    out.add_argument("--fp4-packed", action="store_true", help="linear weights as packed FP4 codes + scales")
    out.add_argument("--fp4-recipe", default="paper", help="whose weight quantizer packs them (default: paper)")
    out.add_argument("--force", action="store_true", help="replace a non-empty --output (only once the new export is complete)")
    into = sub.add_parser("import", help="Hugging Face LLaMA directory -> our checkpoint (weights only)")
    into.add_argument("--hf", required=True)
    into.add_argument("--save", required=True)
    into.add_argument("--tokenizer-model", required=True, help="tokenizer.json for training from it")
    into.add_argument("--seq-length", type=int, default=None, help="training sequence length (default: max_position_embeddings)")
    into.add_argument("--force", action="store_true", help="replace a non-empty --save (only once the new checkpoint is complete)")
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    options = build_parser().parse_args(argv)
    if options.command == "export":
        export(options, extra)
    else:
        import_hf(options)


if __name__ == "__main__":
    main()
