"""FP4 layer specs: megatron-core's GPT/LLaMA specs with the linear layers swapped for FP4 ones.

``to_fp4_spec`` turns any megatron-core ModuleSpec tree into its FP4 version by module swap:
Column/RowParallelLinear (local or Transformer Engine's) become FP4Column/FP4RowParallelLinear;
TE's fused LayerNorm+Linear is split into a norm (TE's where TE is importable, else ours) and an
FP4 linear, since the FP4 GEMM needs the normalised activation itself; megatron's torch-norm
wrapper becomes ``SequenceParallelNorm`` so sequence parallelism works without TE. Attention math,
norms, embeddings and the output layer are not touched: they stay high precision (paper §3).

``get_gpt_fp4_layer_spec`` gives the LLaMA-style GPT layer (TE spec when TE is importable, else
the local spec); ``get_gpt_fp4_block_spec`` gives one spec per layer of this pipeline stage, with
each layer's recipe from ``FP4TransformerConfig.fp4_recipe_for_layer``.
"""

from __future__ import annotations

import copy
import dataclasses

from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.torch_norm import WrappedTorchNorm
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules, get_num_layers_to_build
from megatron.core.transformer.transformer_layer import get_transformer_layer_offset

from ..recipe import FP4Recipe
from .attention import core_attention_for_backend
from .layers import FP4ColumnParallelLinear, FP4RowParallelLinear
from .norm import SequenceParallelNorm

__all__ = ["to_fp4_spec", "with_fp4_recipe", "with_core_attention", "get_gpt_fp4_layer_spec", "get_gpt_fp4_block_spec", "te_available"]

# Swaps by class name, so Transformer Engine's classes are recognised without importing TE.
_COLUMN_NAMES = {"ColumnParallelLinear", "TEColumnParallelLinear", "FP4ColumnParallelLinear"}
_ROW_NAMES = {"RowParallelLinear", "TERowParallelLinear", "FP4RowParallelLinear"}
_FUSED_NORM_COLUMN_NAMES = {"TELayerNormColumnParallelLinear"}
# the norm that a split fused linear needs, keyed by the TransformerLayerSubmodules field it fills
_SPLIT_NORM_FIELDS = {"linear_qkv": "input_layernorm", "linear_fc1": "pre_mlp_layernorm"}
_KEYS_MAP = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_", "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


def te_available() -> bool:
    try:
        import transformer_engine  # noqa: F401
    except Exception:
        return False
    return True


def _default_norm() -> type:
    if te_available():
        from megatron.core.extensions.transformer_engine import TENorm

        return TENorm
    return SequenceParallelNorm


def _swap(module: type, recipe: FP4Recipe | None):
    """The FP4 replacement of one module class, or None to keep it."""
    name = getattr(module, "__name__", None)
    params = {} if recipe is None else {"fp4_recipe": recipe}
    if name in _COLUMN_NAMES or name in _FUSED_NORM_COLUMN_NAMES:
        return ModuleSpec(module=FP4ColumnParallelLinear, params=params)
    if name in _ROW_NAMES:
        return ModuleSpec(module=FP4RowParallelLinear, params=params)
    if module is WrappedTorchNorm:
        return SequenceParallelNorm
    return None


def to_fp4_spec(spec, recipe: FP4Recipe | None = None):
    """A copy of ``spec`` with every parallel linear swapped for its FP4 version.

    recipe: pinned into each FP4 linear's params (a per-layer override); None reads the recipe
    from the model config (``FP4TransformerConfig.fp4_quant_recipe``) at construction.
    """
    if isinstance(spec, type):
        return _swap(spec, recipe) or spec
    if isinstance(spec, ModuleSpec):
        new = copy.copy(spec)
        swapped = _swap(spec.module, recipe) if isinstance(spec.module, type) else None
        if isinstance(swapped, ModuleSpec):
            new.module, new.params = swapped.module, {**spec.params, **swapped.params}
        elif swapped is not None:
            new.module = swapped
        if spec.submodules is not None:
            new.submodules = to_fp4_spec(spec.submodules, recipe)
        return new
    if dataclasses.is_dataclass(spec):
        changes = {f.name: to_fp4_spec(getattr(spec, f.name), recipe) for f in dataclasses.fields(spec) if f.init}
        norms_needed = [norm for f in dataclasses.fields(spec) for norm in _split_linears(getattr(spec, f.name))]
        return _add_split_norms(dataclasses.replace(spec, **changes), norms_needed)
    return spec


def _split_linears(spec) -> list[str]:
    """Norm fields a layer needs because its attention/MLP submodule has a fused norm+linear."""
    needed = []
    submodules = getattr(spec, "submodules", None)
    if submodules is None or not dataclasses.is_dataclass(submodules):
        return needed
    for field_name, norm_field in _SPLIT_NORM_FIELDS.items():
        value = getattr(submodules, field_name, None)
        module = value.module if isinstance(value, ModuleSpec) else value
        if getattr(module, "__name__", None) in _FUSED_NORM_COLUMN_NAMES:
            needed.append(norm_field)
    return needed


def _add_split_norms(spec, norm_fields: list[str]):
    if not norm_fields:
        return spec
    changes = {}
    for norm_field in norm_fields:
        if hasattr(spec, norm_field) and getattr(spec, norm_field) is IdentityOp:
            changes[norm_field] = _default_norm()
    if hasattr(spec, "sharded_state_dict_keys_map"):  # keep checkpoints compatible with the fused layout
        changes["sharded_state_dict_keys_map"] = {**_KEYS_MAP, **(spec.sharded_state_dict_keys_map or {})}
    return dataclasses.replace(spec, **changes)


def with_fp4_recipe(spec, recipe: FP4Recipe):
    """The same FP4 spec with ``recipe`` pinned into every FP4 linear (per-layer override)."""
    return to_fp4_spec(spec, recipe)


def with_core_attention(layer_spec: ModuleSpec, module: type) -> ModuleSpec:
    """A copy of a transformer-layer spec whose self-attention uses ``module`` as core attention."""
    attention = layer_spec.submodules.self_attention
    new_attention = copy.copy(attention)
    new_attention.submodules = dataclasses.replace(attention.submodules, core_attention=module)
    new_layer = copy.copy(layer_spec)
    new_layer.submodules = dataclasses.replace(layer_spec.submodules, self_attention=new_attention)
    return new_layer


def get_gpt_fp4_layer_spec(
    normalization: str = "RMSNorm", qk_layernorm: bool = False, use_te: bool | None = None,
    attention_backend: AttnBackend = AttnBackend.auto, config=None,
) -> ModuleSpec:
    """A GPT/LLaMA transformer-layer spec with FP4 QKV, attention projection and MLP fc1/fc2, and
    the core attention ``attention_backend`` asks for (``megatron_fp4.megatron.attention``)."""
    use_te = te_available() if use_te is None else use_te
    if use_te:
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        base = get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)
    else:
        base = get_gpt_layer_local_spec(normalization=normalization, qk_layernorm=qk_layernorm)
    te_attention = base.submodules.self_attention.submodules.core_attention if use_te else None
    base = with_core_attention(base, core_attention_for_backend(attention_backend, config, te_attention))
    return to_fp4_spec(base)


def get_gpt_fp4_block_spec(config, layer_spec: ModuleSpec | None = None, vp_stage: int | None = None, recipe_for_layer=None) -> TransformerBlockSubmodules:
    """Per-layer FP4 specs for the layers of this pipeline stage; each layer's recipe from
    ``recipe_for_layer(number)`` (1-based global layer number), by default the config's
    ``fp4_recipe_for_layer`` (FP4TransformerConfig)."""
    layer_spec = layer_spec or get_gpt_fp4_layer_spec(
        config.normalization, config.qk_layernorm, attention_backend=config.attention_backend, config=config
    )
    recipe_for = recipe_for_layer or getattr(config, "fp4_recipe_for_layer", None)
    specs = [
        with_fp4_recipe(layer_spec, recipe_for(number)) if recipe_for else layer_spec
        for number in range(1, config.num_layers + 1)
    ]
    offset = get_transformer_layer_offset(config, vp_stage)
    count = get_num_layers_to_build(config, vp_stage)
    return TransformerBlockSubmodules(layer_specs=specs[offset : offset + count], layer_norm=_default_norm())
