"""Fused RoPE for megatron-core without Transformer Engine: upstream's ``apply_rope_fusion`` switch.

megatron-core applies rotary embeddings through ``rope_utils.apply_rotary_pos_emb``; with
``config.apply_rope_fusion`` it calls ``rope_utils.fused_apply_rotary_pos_emb``, which only
Transformer Engine provides (without TE the fused path asserts). ``install()`` puts
``fused_rope`` there when TE is absent, so ``--apply-rope-fusion`` / upstream's default works on
a TE-less Hopper machine: one Triton kernel each way (``megatron_fp4.kernels.rope``). Tensors on
the CPU, interleaved rotations, partial rotary dimensions or a per-sample angle table take
megatron-core's own unfused function, so nothing outside the fused case changes.
"""

from __future__ import annotations

import torch

from ..kernels import triton_available
from ..kernels.rope import cos_sin, rope_reference

__all__ = ["fused_rope", "install", "installed"]


def _rope(t: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, backward: bool) -> torch.Tensor:
    if t.is_cuda and triton_available() and t.stride(-1) == 1:
        from ..kernels.rope import rope_triton

        return rope_triton(t, cos, sin, backward)
    return rope_reference(t, cos, sin, backward)


class _FusedRope(torch.autograd.Function):
    """y = t cos + rotate_half(t) sin; the backward applies the transposed rotation to dy."""

    @staticmethod
    def forward(ctx, t, freqs):
        cos, sin = cos_sin(freqs)
        ctx.save_for_backward(cos, sin)
        return _rope(t, cos, sin, backward=False)

    @staticmethod
    def backward(ctx, grad_output):
        cos, sin = ctx.saved_tensors
        return _rope(grad_output, cos, sin, backward=True), None


def _fusable(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool) -> bool:
    return (
        not interleaved
        and t.dim() == 4
        and freqs.dim() == 4
        and freqs.shape[0] == t.shape[0]
        and freqs.shape[1] == 1
        and freqs.shape[2] == 1
        and freqs.shape[-1] == t.shape[-1]
        and t.shape[-1] % 2 == 0
    )


def fused_rope(t: torch.Tensor, freqs: torch.Tensor, interleaved: bool = False) -> torch.Tensor:
    """megatron-core's ``fused_apply_rotary_pos_emb(t, freqs, interleaved)`` contract: t [s, b, h, d],
    freqs [s, 1, 1, d] angles; other layouts go to megatron-core's unfused function."""
    if not _fusable(t, freqs, interleaved):
        from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

        return _apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=interleaved)
    return _FusedRope.apply(t, freqs)


def install() -> bool:
    """Make megatron-core's ``apply_rope_fusion`` path use ``fused_rope`` where TE does not provide
    one. Returns whether megatron-core's fused RoPE is now available (TE's or ours)."""
    from megatron.core.models.common.embeddings import rope_utils

    if rope_utils.fused_apply_rotary_pos_emb is None:
        rope_utils.fused_apply_rotary_pos_emb = fused_rope
    return rope_utils.fused_apply_rotary_pos_emb is not None


def installed() -> bool:
    """Whether megatron-core's fused RoPE is ours."""
    from megatron.core.models.common.embeddings import rope_utils

    return rope_utils.fused_apply_rotary_pos_emb is fused_rope
