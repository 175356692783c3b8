"""Config validation and spec transformation (no processes needed)."""

import dataclasses

import pytest
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel.layers import ColumnParallelLinear
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnBackend
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_fp4.megatron import FP4ColumnParallelLinear, FP4RowParallelLinear, FP4TransformerConfig, SequenceParallelNorm, to_fp4_spec
from megatron_fp4.megatron.attention import SDPACoreAttention
from megatron_fp4.megatron.specs import get_gpt_fp4_layer_spec
from megatron_fp4.recipe import FP4Recipe, get_recipe

BASE = dict(num_layers=4, hidden_size=64, num_attention_heads=4, ffn_hidden_size=128)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(tensor_model_parallel_size=3), "--tensor-model-parallel-size 3 does not divide --num-attention-heads 4"),
        (dict(num_attention_heads=6, hidden_size=60, tensor_model_parallel_size=2, ffn_hidden_size=120, kv_channels=10), None),
        (dict(ffn_hidden_size=100, tensor_model_parallel_size=8, num_attention_heads=8), "does not divide --ffn-hidden-size 100"),
        (dict(num_query_groups=1, tensor_model_parallel_size=2), "does not divide --num-query-groups 1"),
        (dict(sequence_parallel=True), "--sequence-parallel needs --tensor-model-parallel-size > 1"),
        (dict(ffn_hidden_size=72, tensor_model_parallel_size=2, fp4_quant_recipe=get_recipe("nvfp4")), "blocks of 16 do not divide the local GEMM reduction size 36"),
        (dict(fp4_bf16_layers=(0,)), "layer 0 is outside 1..4"),
    ],
)
def test_bad_layouts_fail_at_construction_naming_flags(overrides, message):
    if message is None:  # a valid layout for comparison
        FP4TransformerConfig(**{**BASE, **overrides})
        return
    with pytest.raises(ValueError, match=message):
        FP4TransformerConfig(**{**BASE, **overrides})


def test_recipe_per_layer():
    config = FP4TransformerConfig(**BASE, fp4_bf16_layers=(1, 4), fp4_layer_recipes={2: FP4Recipe.nvfp4()})
    assert [config.fp4_recipe_for_layer(i).name for i in (1, 2, 3, 4)] == ["bf16", "nvfp4", "paper", "bf16"]


def test_local_spec_becomes_fp4_everywhere_linear_and_nowhere_else():
    spec = get_gpt_fp4_layer_spec(normalization="RMSNorm", use_te=False)
    attention, mlp = spec.submodules.self_attention.submodules, spec.submodules.mlp.submodules
    assert attention.linear_qkv.module is FP4ColumnParallelLinear and attention.linear_proj.module is FP4RowParallelLinear
    assert mlp.linear_fc1.module is FP4ColumnParallelLinear and mlp.linear_fc2.module is FP4RowParallelLinear
    assert attention.core_attention is SDPACoreAttention  # attention math stays high precision (auto: SDPA without TE)
    local = get_gpt_fp4_layer_spec(normalization="RMSNorm", use_te=False, attention_backend=AttnBackend.local)
    assert local.submodules.self_attention.submodules.core_attention is DotProductAttention
    with pytest.raises(ValueError, match="--attention-backend fused is Transformer Engine's"):
        get_gpt_fp4_layer_spec(normalization="RMSNorm", use_te=False, attention_backend=AttnBackend.fused)
    assert spec.submodules.input_layernorm is SequenceParallelNorm and spec.submodules.pre_mlp_layernorm is SequenceParallelNorm
    original = get_gpt_layer_local_spec(normalization="RMSNorm")
    assert original.submodules.self_attention.submodules.linear_qkv is ColumnParallelLinear  # input untouched


def test_pinned_recipe_goes_into_params():
    spec = to_fp4_spec(get_gpt_layer_local_spec(), FP4Recipe.mxfp4())
    assert spec.submodules.mlp.submodules.linear_fc2.params == {"fp4_recipe": FP4Recipe.mxfp4()}


def test_transformer_engine_fused_norm_linear_is_split():
    # stand-ins named like Transformer Engine's classes (TE itself is not installed on CPU machines)
    TELayerNormColumnParallelLinear = type("TELayerNormColumnParallelLinear", (), {})
    TERowParallelLinear = type("TERowParallelLinear", (), {})
    te_like = ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=IdentityOp,
            self_attention=ModuleSpec(module=object, submodules=_Attention(TELayerNormColumnParallelLinear, TERowParallelLinear)),
            pre_mlp_layernorm=IdentityOp,
            mlp=ModuleSpec(module=object, submodules=_MLP(TELayerNormColumnParallelLinear, TERowParallelLinear)),
        ),
    )
    fp4 = to_fp4_spec(te_like)
    layer = fp4.submodules
    assert layer.self_attention.submodules.linear_qkv.module is FP4ColumnParallelLinear
    assert layer.mlp.submodules.linear_fc2.module is FP4RowParallelLinear
    assert layer.input_layernorm is SequenceParallelNorm and layer.pre_mlp_layernorm is SequenceParallelNorm
    assert layer.sharded_state_dict_keys_map["input_layernorm."] == "self_attention.linear_qkv.layer_norm_"


@dataclasses.dataclass
class _Attention:
    linear_qkv: type
    linear_proj: type


@dataclasses.dataclass
class _MLP:
    linear_fc1: type
    linear_fc2: type
