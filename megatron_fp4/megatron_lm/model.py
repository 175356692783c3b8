"""Our FP4 layer spec inside Megatron-LM's ``gpt_builders.gpt_builder``."""

from __future__ import annotations

from ..megatron.config import validate_fp4_layout
from ..megatron.fused_norm import fuse_rms_norms_into_linears
from ..megatron.mlp import fuse_swiglu_into_fc2
from ..megatron.model import name_fp4_layers
from ..megatron.specs import get_gpt_fp4_block_spec, get_gpt_fp4_layer_spec, te_available
from ..recipe import FP4Recipe
from .arguments import recipe_from_args

__all__ = ["transformer_layer_spec", "finish_model"]

# upstream model variants our FP4 spec does not cover (flag -> argument name)
UNSUPPORTED = {
    "--num-experts": "num_experts", "--multi-latent-attention": "multi_latent_attention", "--spec": "spec",
    "--heterogeneous-layers-config-path": "heterogeneous_layers_config_path", "--experimental-attention-variant": "experimental_attention_variant",
    "--mtp-num-layers": "mtp_num_layers", "--use-legacy-models": "use_legacy_models", "--yaml-cfg": "yaml_cfg",
}


def transformer_layer_spec(args, config, vp_stage=None):
    """The block spec of this pipeline stage with our FP4 linears, or None when FP4 is not ours
    (upstream builds its own spec then). Per layer: the recipe, or BF16 for the layers
    --first-last-layers-bf16 / --fp4-bf16-layers name."""
    recipe = recipe_from_args(args)
    if recipe is None:
        return None
    for flag, name in UNSUPPORTED.items():
        if getattr(args, name, None):
            raise ValueError(f"--fp4-recipe {recipe.name}: {flag} is not supported by megatron-fp4's layer spec")
    validate_fp4_layout(config, [recipe])
    use_te = args.transformer_impl == "transformer_engine" and te_available()
    layer = get_gpt_fp4_layer_spec(args.normalization, args.qk_layernorm, use_te=use_te, attention_backend=config.attention_backend, config=config)
    bf16 = set(args.megatron_fp4_bf16_layers)
    return get_gpt_fp4_block_spec(config, layer, vp_stage, recipe_for_layer=lambda number: FP4Recipe.bf16() if number in bf16 else recipe)


def finish_model(model, args, config, vp_stage=None):
    """Name the FP4 layers with global layer numbers (health logs, check-finite errors), let FP4
    fc2 layers compute the SwiGLU inside their quantizer (``megatron.mlp``; upstream's
    ``--no-bias-swiglu-fusion`` turns it off with upstream's own fusion) and FP4 QKV / fc1 layers
    the RMSNorm before them (``megatron.fused_norm``, on CUDA)."""
    if getattr(args, "megatron_fp4_recipe", None) is not None:
        fuse_swiglu_into_fc2(model)
        fuse_rms_norms_into_linears(model)
        name_fp4_layers(model, config, vp_stage)
    return model
