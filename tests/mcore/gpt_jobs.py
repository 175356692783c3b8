"""Jobs for the distributed tests: build a small LLaMA-style GPTModel, step it, save/load it."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from megatron_fp4.megatron import FP4TransformerConfig, build_fp4_gpt_model
from megatron_fp4.recipe import get_recipe

from .dist_harness import device

VOCAB, SEQ, BATCH = 128, 32, 2


def build_model(recipe: str = "paper", stock_spec: bool = False, sequence_parallel: bool = False, **overrides):
    config = FP4TransformerConfig(
        num_layers=4,
        hidden_size=64,
        num_attention_heads=4,
        num_query_groups=2,
        ffn_hidden_size=128,
        gated_linear_unit=True,
        activation_func=F.silu,
        normalization="RMSNorm",
        add_bias_linear=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        tensor_model_parallel_size=parallel_state.get_tensor_model_parallel_world_size(),
        pipeline_model_parallel_size=parallel_state.get_pipeline_model_parallel_world_size(),
        sequence_parallel=sequence_parallel,
        use_cpu_initialization=True,
        params_dtype=torch.float32,
        pipeline_dtype=torch.float32,
        fp4_quant_recipe=get_recipe(recipe),
        **overrides,
    )
    gpt_kwargs = dict(position_embedding_type="rope", share_embeddings_and_output_weights=False)
    if stock_spec:
        model = GPTModel(
            config=config,
            transformer_layer_spec=get_gpt_layer_local_spec(normalization="RMSNorm"),
            vocab_size=VOCAB,
            max_sequence_length=SEQ,
            pre_process=parallel_state.is_pipeline_first_stage(),
            post_process=parallel_state.is_pipeline_last_stage(),
            **gpt_kwargs,
        )
    else:
        model = build_fp4_gpt_model(config, VOCAB, SEQ, **gpt_kwargs)
    return model.to(device())


def batch():
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ + 1), generator=generator)
    return tokens[:, :-1].to(device()), tokens[:, 1:].to(device())


def step(model) -> float | None:
    """One forward+backward through megatron-core's schedule; the loss on the last stage."""
    tokens, labels = batch()
    positions = torch.arange(SEQ, device=tokens.device).unsqueeze(0).expand(BATCH, SEQ)

    def forward_step(data_iterator, model):
        out = model(tokens, positions, None, labels=labels)

        def loss_func(output):
            loss = output.float().mean()
            return loss, {"lm loss": loss.detach()}

        return out, loss_func

    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter([None]),
        model=[model],
        num_microbatches=1,
        seq_length=SEQ,
        micro_batch_size=BATCH,
        forward_only=False,
    )
    if model.config.sequence_parallel:  # what megatron's grad finalisation does for replicated norms
        for p in model.parameters():
            if getattr(p, "sequence_parallel", False) and p.grad is not None:
                dist.all_reduce(p.grad, group=parallel_state.get_tensor_model_parallel_group())
    return losses[0]["lm loss"].item() if losses else None


def save_checkpoint(model, path: str) -> None:
    os.makedirs(path, exist_ok=True)
    dist_checkpointing.save(model.sharded_state_dict(), path)


def save_grads_as_checkpoint(model, path: str) -> None:
    """Write the gradients through the model's sharded state dict, so any layout reads them back."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad)
    save_checkpoint(model, path)


def load_checkpoint(model, path: str) -> None:
    model.load_state_dict(dist_checkpointing.load(model.sharded_state_dict(), path))


def reference_job(recipe: str, weights_dir: str, grads_dir: str) -> dict:
    """TP=1/PP=1: save the initial weights, step once, save the gradients."""
    model = build_model(recipe)
    save_checkpoint(model, weights_dir)
    loss = step(model)
    save_grads_as_checkpoint(model, grads_dir)
    return {"loss": loss}


def parallel_job(recipe: str, weights_dir: str, grads_dir: str, sequence_parallel: bool = False) -> dict:
    """Any TP/PP: load the reference weights (resharded by dist_checkpointing), step, save grads."""
    model = build_model(recipe, sequence_parallel=sequence_parallel)
    load_checkpoint(model, weights_dir)
    loss = step(model)
    save_grads_as_checkpoint(model, grads_dir)
    return {"loss": loss}


def read_grads_job(recipe: str, grads_dirs: list[str]) -> list[dict]:
    """TP=1: read each saved gradient checkpoint back as full tensors by parameter name."""
    out = []
    for path in grads_dirs:
        model = build_model(recipe)
        load_checkpoint(model, path)
        out.append({name: p.detach().cpu().clone() for name, p in model.named_parameters()})
    return out


def stock_vs_bf16_job() -> dict:
    """TP=1: megatron's stock local spec and our FP4 spec with the `bf16` preset, same weights:
    with megatron's own attention (`unfused`) and with SDPA (`flash`, what `auto` picks without TE)."""
    from megatron.core.transformer.enums import AttnBackend

    results = {}
    runs = (
        ("stock", dict(stock_spec=True)),
        ("bf16", dict(recipe="bf16", attention_backend=AttnBackend.unfused)),
        ("bf16_sdpa", dict(recipe="bf16", attention_backend=AttnBackend.flash)),
        ("bf16_auto", dict(recipe="bf16")),
    )
    for name, kwargs in runs:
        for variable in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN"):
            os.environ.pop(variable, None)  # megatron's GPTModel sets these per backend and asserts they agree
        model_parallel_cuda_manual_seed(99)
        torch.manual_seed(99)
        model = build_model(**kwargs)
        loss = step(model)
        results[name] = (loss, {n: p.grad.detach().cpu().clone() for n, p in model.named_parameters()})
        results[name + "_attention"] = type(model.decoder.layers[0].self_attention.core_attention).__name__
    return results


def layer_recipes_job(bf16_layers: tuple[int, ...], fp4_output_layer: bool, bias_activation_fusion: bool = False) -> dict:
    """Which recipe each linear (and which class each norm and MLP) of a built model has, by
    parameter-free module name."""
    model = build_model("paper", fp4_bf16_layers=bf16_layers, fp4_output_layer=fp4_output_layer, bias_activation_fusion=bias_activation_fusion)
    return {
        name: (type(module).__name__, getattr(getattr(module, "fp4_recipe", None), "name", None))
        for name, module in model.named_modules()
        if any(kind in type(module).__name__ for kind in ("Linear", "Norm", "MLP"))
    }


def fused_norm_conversion_job() -> dict:
    """``fuse_rms_norms_into_linears`` on a built model (forced on CPU): which norms it fuses, the
    state-dict keys before and after, the logits before and after; and that a recomputed norm is
    left alone (its output storage would be freed, and that output is now the residual stream)."""
    from megatron_fp4.megatron.fused_norm import fuse_rms_norms_into_linears

    torch.manual_seed(3)
    model_parallel_cuda_manual_seed(3)
    model = build_model("paper", fp4_bf16_layers=(1,))
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(5)).to(device())
    position_ids = torch.arange(SEQ, device=device()).expand(BATCH, SEQ)

    def logits():
        with torch.no_grad():
            return model(tokens, position_ids, None).float().cpu()

    before_keys, before = sorted(model.state_dict()), logits()
    fused = fuse_rms_norms_into_linears(model, on_cpu=True)
    norms = {name: type(module).__name__ for name, module in model.named_modules() if name.endswith("layernorm")}
    out = {"fused": fused, "norms": norms, "keys_unchanged": sorted(model.state_dict()) == before_keys, "before": before, "after": logits()}
    recomputed = build_model("paper", recompute_granularity="selective", recompute_modules=["layernorm"])
    out["fused_when_recomputed"] = fuse_rms_norms_into_linears(recomputed, on_cpu=True)
    return out
