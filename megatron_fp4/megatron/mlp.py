"""megatron-core's MLP with the SwiGLU fused into fc2's FP4 input quantizer.

Upstream's MLP runs fc1, writes swiglu(fc1 output) with its fused SwiGLU kernel, and hands that to
fc2, whose FP4 quantizer reads it again. ``FP4MLP`` hands fc1's output straight to the FP4 fc2
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

__all__ = ["FP4MLP"]


class FP4MLP(MLP):
    """MLP whose FP4 fc2 quantizes inside the SwiGLU where it can (see the module docstring)."""

    def __init__(self, config, submodules, *args, **kwargs):
        super().__init__(config, submodules, *args, **kwargs)
        self.fp4_fused_swiglu = (
            getattr(config, "fp4_quantize_fusion", True)
            and config.gated_linear_unit
            and self.activation_func is F.silu
            and config.bias_activation_fusion
            and not config.use_te_activation_func
            and not config.add_bias_linear
            and getattr(config, "activation_func_clamp_value", None) is None
            and getattr(config, "glu_linear_offset", 0.0) == 0.0
            and isinstance(self.linear_fc2, FP4RowParallelLinear)
            and self.linear_fc2.takes_swiglu_pre_activation
        )

    def forward(self, hidden_states, per_token_scale=None, **kwargs):
        if not self.fp4_fused_swiglu or per_token_scale is not None:
            return super().forward(hidden_states, per_token_scale=per_token_scale, **kwargs)
        pre_activation, _ = self.linear_fc1(hidden_states)  # no fc1 bias (checked at construction)
        return self.linear_fc2.forward_swiglu(pre_activation)
