"""The RMSNorm before the QKV and fc1 linears computed inside their FP4 input quantizer.

Upstream's transformer layer normalizes the residual stream (``input_layernorm``,
``pre_mlp_layernorm``) and hands the 16-bit result to the next linear, whose FP4 quantizer reads it
again. ``fuse_rms_norms_into_linears`` (run after the model is built, like
``mlp.fuse_swiglu_into_fc2``) makes such a norm pass x through unchanged and lets the FP4
ColumnParallel linear after it normalize and quantize in its own pass
(``megatron_fp4.fused_inputs``): the normalized activation is never written. The norm module, its
weight and its checkpoint key stay where they are (``...input_layernorm.weight``), so checkpoints
load either way; the linear holds a reference to it, not a submodule. The weight's gradient comes
back through the linear's backward (torch's RMSNorm backward from the saved x and 1/rms), and with
sequence parallelism it is a partial sum marked for megatron-core's all-reduce, as before.

It applies where upstream's layer feeds the norm's output only to that linear: torch's RMSNorm
with a weight, an FP4 ColumnParallel QKV / fc1 whose recipe can take it
(``fused_inputs.rms_norm_fusable``), no recomputation or offloading of that norm's output (both
would free or move a tensor that is now the residual stream itself), ``--fp4-quantize-fusion``
(the default), a CUDA device (the fused kernel's; ``on_cpu=True`` converts anyway, for tests of
the wiring: there the linear writes the norm out with ``fused_inputs.rms_norm_reference`` and
quantizes it, the same definition). Everything else keeps upstream's norm.
"""

from __future__ import annotations

import torch

from .layers import FP4ColumnParallelLinear

__all__ = ["FusedIntoLinearRMSNorm", "fuse_rms_norms_into_linears"]


class FusedIntoLinearRMSNorm(torch.nn.RMSNorm):
    """An RMSNorm that the following FP4 linear computes: its forward returns x unchanged; its
    weight, state-dict key and sequence-parallel marking stay those of the norm it was made from."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# (the layer's flags that recompute or offload the norm's output, the norm, the linear after it)
_PAIRS = (
    (("recompute_input_layernorm", "offload_attn_norm"), "input_layernorm", ("self_attention", "linear_qkv")),
    (("recompute_pre_mlp_layernorm", "offload_mlp_norm"), "pre_mlp_layernorm", ("mlp", "linear_fc1")),
)


def _fusable(layer, flags: tuple[str, ...], norm, linear) -> bool:
    if type(norm) is not torch.nn.RMSNorm or norm.weight is None or len(norm.normalized_shape) != 1:
        return False
    if not isinstance(linear, FP4ColumnParallelLinear) or not getattr(linear.config, "fp4_quantize_fusion", True):
        return False
    if any(getattr(layer, flag, False) for flag in flags):
        return False
    return linear.takes_rms_norm_input(norm.normalized_shape[0]) and linear.input_size == norm.normalized_shape[0]


def fuse_rms_norms_into_linears(model: torch.nn.Module, on_cpu: bool = False) -> int:
    """Fuse every fusable RMSNorm of ``model``'s transformer layers into the FP4 linear after it
    (see the module docstring); returns how many were."""
    from megatron.core.transformer.transformer_layer import TransformerLayer

    if not (on_cpu or torch.cuda.is_available()):
        return 0
    fused = 0
    for layer in model.modules():
        if not isinstance(layer, TransformerLayer):
            continue
        for flags, norm_name, (block_name, linear_name) in _PAIRS:
            norm = getattr(layer, norm_name, None)
            linear = getattr(getattr(layer, block_name, None), linear_name, None)
            if _fusable(layer, flags, norm, linear):
                norm.__class__ = FusedIntoLinearRMSNorm
                linear._fused_rms_norm = (norm,)  # a tuple: not registered as a submodule (no second state-dict key)
                fused += 1
    return fused
