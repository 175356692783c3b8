"""Megatron-Core integration: FP4 parallel linear layers, layer specs, config, CPU runtime.

Importing this needs megatron-core (a dependency of the package).
"""

from .config import FP4TransformerConfig, validate_fp4_layout
from .cpu_runtime import enable_cpu_runtime
from .layers import FP4ColumnParallelLinear, FP4ParallelLinearFunction, FP4RowParallelLinear
from .model import build_fp4_gpt_model
from .norm import SequenceParallelNorm
from .specs import get_gpt_fp4_block_spec, get_gpt_fp4_layer_spec, to_fp4_spec, with_fp4_recipe

__all__ = [
    "FP4ColumnParallelLinear",
    "FP4ParallelLinearFunction",
    "FP4RowParallelLinear",
    "FP4TransformerConfig",
    "SequenceParallelNorm",
    "build_fp4_gpt_model",
    "enable_cpu_runtime",
    "get_gpt_fp4_block_spec",
    "get_gpt_fp4_layer_spec",
    "to_fp4_spec",
    "validate_fp4_layout",
    "with_fp4_recipe",
]
