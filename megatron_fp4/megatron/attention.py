"""Core attention on ``torch.nn.functional.scaled_dot_product_attention`` (flash on CUDA), no TE needed.

megatron-core's local ``DotProductAttention`` materialises the [b, heads, s, s] score matrix and
runs scale, mask, softmax and dropout as separate kernels: measured on an H100 at the LLaMA-2 7B
layer shape, 58% of a BF16 training step was outside GEMMs because of it. PyTorch's SDPA runs the
same math as one fused kernel (FlashAttention-2 for bf16/fp16 on sm80+; a memory-efficient or
math kernel elsewhere) and handles causal masking, grouped-query attention and dropout itself.

``SDPACoreAttention`` is a drop-in for ``DotProductAttention`` (same constructor, same [s, b, n, d]
inputs and [s, b, n*d] output); it inherits the head bookkeeping and the softmax scale and only
replaces the forward. ``core_attention_for_backend`` maps Megatron-LM's ``--attention-backend``
to the module a layer spec should use.
"""

from __future__ import annotations

import contextlib

import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnBackend, AttnMaskType

__all__ = ["SDPACoreAttention", "core_attention_for_backend", "sdpa_supports"]


def sdpa_supports(config) -> str | None:
    """None when SDPACoreAttention can run this config, else what it lacks (for the error)."""
    if getattr(config, "window_size", None) is not None:
        return "sliding-window attention (--window-size)"
    if getattr(config, "softmax_type", "vanilla") != "vanilla":
        return f"--softmax-type {config.softmax_type}"
    if getattr(config, "context_parallel_size", 1) != 1:
        return "context parallelism"
    return None


class SDPACoreAttention(DotProductAttention):
    """``softmax(Q K^T * scale + causal mask) V`` through one SDPA call; see the module docstring."""

    def __init__(self, config, layer_number, attn_mask_type, attention_type, attention_dropout=None, softmax_scale=None, cp_comm_type=None, pg_collection=None):
        missing = sdpa_supports(config)
        if missing is not None:
            raise ValueError(f"--attention-backend flash (torch SDPA) does not support {missing}; use --attention-backend unfused")
        super().__init__(config, layer_number, attn_mask_type, attention_type, attention_dropout, softmax_scale, cp_comm_type, pg_collection)
        # DotProductAttention divides the scale by the layer number for query-key layer scaling and
        # multiplies it back inside its fp32 softmax; SDPA applies the whole scale at once
        self.sdpa_scale = self.softmax_scale * (self.layer_number if self.config.apply_query_key_layer_scaling else 1)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None, attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None or attention_bias is not None:
            raise ValueError("SDPACoreAttention: packed sequences and attention bias need Transformer Engine's attention")
        mask_type = attn_mask_type if attn_mask_type is not None else self.attn_mask_type
        causal = mask_type == AttnMaskType.causal
        mask = None
        if attention_mask is not None and not causal:
            mask = ~attention_mask  # megatron's masks mark the positions to hide, SDPA's those to keep
        # [s, b, heads, d] -> [b, heads, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        grouped = self.num_attention_heads_per_partition != self.num_query_groups_per_partition
        dropout = self.attention_dropout.p if self.training else 0.0
        # dropout draws from the tensor-parallel RNG stream, as DotProductAttention does
        with tensor_parallel.get_cuda_rng_tracker().fork() if dropout and not self.config.sequence_parallel else contextlib.nullcontext():
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal and mask is None, scale=self.sdpa_scale, enable_gqa=grouped)
        sequence, batch = query.shape[0], query.shape[1]
        return context.permute(2, 0, 1, 3).reshape(sequence, batch, self.hidden_size_per_partition)


def core_attention_for_backend(backend: AttnBackend, config, te_spec_module: type | None) -> type:
    """The core-attention class for ``--attention-backend`` (upstream's names).

    flash: SDPA (FlashAttention-2 kernel on CUDA). unfused / local: megatron-core's
    DotProductAttention. fused: Transformer Engine's (needs TE). auto: TE's attention where the
    TE spec is in use (it picks among its own backends), else SDPA where the config allows it,
    else DotProductAttention."""
    if backend in (AttnBackend.unfused, AttnBackend.local):
        return DotProductAttention
    if backend == AttnBackend.fused:
        if te_spec_module is None:
            raise ValueError("--attention-backend fused is Transformer Engine's fused attention; TE is not installed (use flash or unfused)")
        return te_spec_module
    if backend == AttnBackend.flash:
        return SDPACoreAttention  # its constructor names what the config lacks, if anything
    if te_spec_module is not None:
        return te_spec_module
    return SDPACoreAttention if sdpa_supports(config) is None else DotProductAttention
