"""A LayerNorm/RMSNorm for Megatron specs that works with sequence parallelism and without TE.

megatron-core's ``WrappedTorchNorm`` refuses sequence parallelism. With SP each tensor-parallel
rank normalises its own slice of the sequence with replicated parameters, so the parameters'
gradients are partial sums: marking them ``sequence_parallel`` makes megatron-core's gradient
finalisation all-reduce them across the tensor-parallel group, as it does for TE's norms.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

__all__ = ["SequenceParallelNorm"]


class SequenceParallelNorm:
    """Builds ``torch.nn.LayerNorm`` or ``torch.nn.RMSNorm`` (by ``config.normalization``)."""

    def __new__(
        cls,
        config: TransformerConfig,
        hidden_size: int,
        eps: float = 1e-5,
        persist_layer_norm: bool = False,
        zero_centered_gamma: bool = False,
        normalization: str = "LayerNorm",
    ) -> torch.nn.Module:
        if config.layernorm_zero_centered_gamma:
            raise ValueError("--apply-layernorm-1p (zero-centered gamma) needs Transformer Engine's norms")
        kind = config.normalization
        if kind == "LayerNorm":
            norm = torch.nn.LayerNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        elif kind == "RMSNorm":
            norm = torch.nn.RMSNorm(hidden_size, eps=eps, dtype=config.params_dtype)
        else:
            raise ValueError(f"--normalization {kind!r}: allowed LayerNorm, RMSNorm")
        for parameter in norm.parameters():
            setattr(parameter, "sequence_parallel", config.sequence_parallel)
        return norm
