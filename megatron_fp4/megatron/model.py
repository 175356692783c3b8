"""Build a megatron-core GPTModel whose transformer layers follow the config's FP4 recipes."""

from __future__ import annotations

from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel

from .config import FP4TransformerConfig
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from .layers import FP4ColumnParallelLinear
from .fused_norm import fuse_rms_norms_into_linears
from .mlp import fuse_swiglu_into_fc2
from .specs import get_gpt_fp4_block_spec

__all__ = ["build_fp4_gpt_model", "name_fp4_layers"]


def build_fp4_gpt_model(config: FP4TransformerConfig, vocab_size: int, max_sequence_length: int, vp_stage: int | None = None, **gpt_kwargs) -> GPTModel:
    """GPTModel with the FP4 block spec for this pipeline stage.

    Embeddings and the output layer stay high precision (paper §3) unless
    ``config.fp4_output_layer`` asks for the LM head to run the recipe too.
    gpt_kwargs go to GPTModel (position_embedding_type, share_embeddings_and_output_weights, ...).
    """
    gpt_kwargs.setdefault("pre_process", parallel_state.is_pipeline_first_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage))
    gpt_kwargs.setdefault("post_process", parallel_state.is_pipeline_last_stage(ignore_virtual=vp_stage is None, vp_stage=vp_stage))
    model = GPTModel(
        config=config,
        transformer_layer_spec=get_gpt_fp4_block_spec(config, vp_stage=vp_stage),
        vocab_size=vocab_size,
        max_sequence_length=max_sequence_length,
        vp_stage=vp_stage,
        **gpt_kwargs,
    )
    if config.fp4_output_layer and getattr(model, "output_layer", None) is not None:
        FP4ColumnParallelLinear.convert(model.output_layer, config.fp4_quant_recipe)
    fuse_swiglu_into_fc2(model)  # fc2's FP4 quantizer computes the SwiGLU (megatron_fp4.megatron.mlp)
    fuse_rms_norms_into_linears(model)  # QKV's and fc1's FP4 quantizers compute the RMSNorm (megatron_fp4.megatron.fused_norm)
    return name_fp4_layers(model, config, vp_stage)


def name_fp4_layers(model, config, vp_stage: int | None = None):
    """Give every FP4 linear its module path with the global layer number (health logs and
    check-finite errors name layers the same way on every pipeline stage)."""
    offset = get_transformer_layer_offset(config, vp_stage)
    for name, module in model.named_modules():
        if hasattr(module, "fp4_name"):
            parts = name.split(".")
            if len(parts) > 2 and parts[0] == "decoder" and parts[1] == "layers":
                parts[2] = str(int(parts[2]) + offset)
            module.fp4_name = ".".join(parts)
    return model
