"""How the FP4 recipe reaches a Megatron model: a TransformerConfig subclass with the recipe.

One ``FP4TransformerConfig`` configures a whole model: ``fp4_quant_recipe`` is the default for
every FP4 linear layer, ``fp4_layer_recipes`` overrides it per transformer layer (1-based global
layer numbers, as Megatron counts them), and ``fp4_bf16_layers`` is the common case of keeping
some layers (e.g. the first and last) in BF16. megatron-core's own ``fp4`` / ``fp4_recipe`` fields
switch on Transformer Engine's NVFP4 and stay unset here; our recipe lives in its own fields.
Construction validates the layout: the errors name the Megatron command-line flag and the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from megatron.core.transformer.transformer_config import TransformerConfig

from ..recipe import FP4Recipe

__all__ = ["FP4TransformerConfig", "validate_fp4_layout"]


@dataclass
class FP4TransformerConfig(TransformerConfig):
    """TransformerConfig plus the FP4 recipe (default `paper`) and per-layer overrides."""

    fp4_quant_recipe: FP4Recipe = field(default_factory=FP4Recipe.paper)
    fp4_layer_recipes: Mapping[int, FP4Recipe] = field(default_factory=dict)
    fp4_bf16_layers: tuple[int, ...] = ()
    fp4_output_layer: bool = False  # the LM head stays high precision unless this is set
    fp4_quantize_fusion: bool = True  # FP4 fc2 / QKV / fc1 compute the SwiGLU / RMSNorm inside their quantizer (megatron.mlp, megatron.fused_norm)

    def __post_init__(self) -> None:
        validate_fp4_layout(self)
        super().__post_init__()
        for layer in (*self.fp4_layer_recipes, *self.fp4_bf16_layers):
            if not 1 <= layer <= self.num_layers:
                raise ValueError(
                    f"--fp4-bf16-layers / fp4_layer_recipes: layer {layer} is outside 1..{self.num_layers} "
                    f"(--num-layers {self.num_layers})"
                )

    def fp4_recipe_for_layer(self, layer_number: int) -> FP4Recipe:
        """The recipe of transformer layer ``layer_number`` (1-based, global)."""
        if layer_number in self.fp4_bf16_layers:
            return FP4Recipe.bf16()
        return self.fp4_layer_recipes.get(layer_number, self.fp4_quant_recipe)


def _require_divisible(value: int, divisor: int, value_flag: str, divisor_flag: str) -> None:
    if divisor <= 0 or value % divisor:
        raise ValueError(f"{divisor_flag} {divisor} does not divide {value_flag} {value}")


def validate_fp4_layout(config: TransformerConfig, recipes=None) -> None:
    """Fail at construction, naming flags and numbers, for layouts the FP4 layers cannot run
    (``recipes``: the FP4 recipes in use; default: those of an FP4TransformerConfig)."""
    tp = config.tensor_model_parallel_size
    if config.sequence_parallel and tp == 1:
        raise ValueError("--sequence-parallel needs --tensor-model-parallel-size > 1 (got 1)")
    _require_divisible(config.num_attention_heads, tp, "--num-attention-heads", "--tensor-model-parallel-size")
    _require_divisible(config.hidden_size, tp, "--hidden-size", "--tensor-model-parallel-size")
    ffn = config.ffn_hidden_size if config.ffn_hidden_size is not None else 4 * config.hidden_size
    _require_divisible(ffn, tp, "--ffn-hidden-size", "--tensor-model-parallel-size")
    if config.num_query_groups is not None:
        _require_divisible(config.num_query_groups, tp, "--num-query-groups", "--tensor-model-parallel-size")
    kv_channels = config.kv_channels or config.hidden_size // config.num_attention_heads
    if recipes is None:
        recipes = [getattr(config, "fp4_quant_recipe", None), *getattr(config, "fp4_layer_recipes", {}).values()]
    for recipe in filter(None, recipes):
        for operand in ("fprop_input", "fprop_weight"):
            block = getattr(recipe, operand).block_size
            if block is None:
                continue
            # every GEMM's K on one rank: hidden (QKV, fc1), heads*kv/TP (proj), ffn/TP (fc2)
            shards = {
                "--hidden-size": config.hidden_size,
                "--num-attention-heads x --kv-channels / --tensor-model-parallel-size": config.num_attention_heads
                * kv_channels
                // tp,
                "--ffn-hidden-size / --tensor-model-parallel-size": ffn // tp,
            }
            for flag, k in shards.items():
                if k % block:
                    raise ValueError(
                        f"--fp4-recipe {recipe.name}: {recipe.fprop_input.granularity} blocks of {block} do not divide "
                        f"the local GEMM reduction size {k} ({flag})"
                    )
