"""megatron-core's MLP with the SwiGLU fused into fc2's FP4 input quantizer.

Upstream's MLP runs fc1, writes swiglu(fc1 output) with its fused SwiGLU kernel, and hands that to
fc2, whose FP4 quantizer reads it again. ``FP4MLP`` (made from upstream's MLP after the model is
built: ``fuse_swiglu_into_fc2``) hands fc1's output straight to the FP4 fc2
(``FP4RowParallelLinear.forward_swiglu``), whose quantizer computes the activation itself
(``megatron_fp4.fused_inputs``): the [tokens, FFN] activation is never written. It applies where
upstream would run its fused SwiGLU on exactly that tensor (``--swiglu`` with
``--bias-swiglu-fusion``, no fc1 bias, no per-token scale, clamp or GLU offset) and fc2's recipe
can take it (``fused_inputs.swiglu_fusable``); everywhere else, and with
``--no-fp4-quantize-fusion``, it is upstream's forward unchanged. (Without CUDA the same path
writes the activation with ``fused_inputs.swiglu_reference`` and quantizes it: same definition.)
"""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP

from .layers import FP4RowParallelLinear

__all__ = ["FP4MLP", "fuse_swiglu_into_fc2"]


class FP4MLP(MLP):
    """MLP whose FP4 fc2 quantizes inside the SwiGLU (see the module docstring). Made from a built
    MLP by ``convert`` (megatron-core builds the MLP with its own arguments, e.g. its
    tensor-parallel group; its layer code treats subclasses in a spec as unknown MLP types)."""

    @staticmethod
    def fusable(mlp: MLP) -> bool:
        """Whether upstream would run its fused SwiGLU on fc1's output and fc2 can take it."""
        config = mlp.config
        return (
            getattr(config, "fp4_quantize_fusion", True)
            and config.gated_linear_unit
            and mlp.activation_func is F.silu
            and config.bias_activation_fusion
            and not config.use_te_activation_func
            and mlp.linear_fc1.bias is None
            and getattr(config, "activation_func_clamp_value", None) is None
            and getattr(config, "glu_linear_offset", 0.0) == 0.0
            and isinstance(mlp.linear_fc2, FP4RowParallelLinear)
            and mlp.linear_fc2.takes_swiglu_pre_activation
        )

    @classmethod
    def convert(cls, mlp: MLP) -> MLP:
        """Make ``mlp`` an FP4MLP in place where ``fusable``; otherwise leave it upstream's."""
        if type(mlp) is MLP and cls.fusable(mlp):
            mlp.__class__ = cls
        return mlp

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if per_token_scale is not None:
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        pre_activation, _ = self.linear_fc1(hidden_states)  # no fc1 bias (``fusable``)
        return self.linear_fc2.forward_swiglu(pre_activation)


def fuse_swiglu_into_fc2(model) -> int:
    """Convert every fusable MLP of ``model`` (``FP4MLP.convert``); returns how many were."""
    mlps = [module for module in model.modules() if type(module) is MLP]
    return sum(isinstance(FP4MLP.convert(mlp), FP4MLP) for mlp in mlps)
