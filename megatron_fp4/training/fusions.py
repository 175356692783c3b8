"""Megatron-LM's kernel-fusion flags for the trainer, with upstream's spellings and defaults.

    --no-bias-swiglu-fusion     SwiGLU in one compiled kernel each way (megatron-core's
                                ``bias_swiglu_impl``, ``torch.compile``d); default on, as upstream
    --no-bias-gelu-fusion       likewise for GELU with a bias (megatron-core needs the bias)
    --no-rope-fusion            RoPE in one kernel each way: Transformer Engine's where installed,
                                else ours (``megatron_fp4.megatron.rope``); default on, as upstream
    --cross-entropy-loss-fusion megatron-core's fused vocabulary-parallel cross-entropy (off by
    --cross-entropy-fusion-impl default, as upstream); ``native`` (megatron-core's) or ``te``
    --no-fp4-quantize-fusion    ours: the SwiGLU written out and read again by fc2's FP4 quantizer,
                                instead of computed inside it (``megatron_fp4.megatron.mlp``;
                                default on wherever the fused SwiGLU is), and likewise the RMSNorm
                                before QKV / fc1 (``megatron_fp4.megatron.fused_norm``); for A/B

The fusions change rounding only (one rounding per fused op instead of one per unfused step);
they are the same for BF16 and every FP4 recipe, so comparisons between recipes stay fair.
"On" needs a GPU: on CPU (tests, quickstart) the fused kernels are not compiled, megatron-core's
unfused code runs, and the defaults are off there; asking for a fusion explicitly on a machine
without CUDA is not possible with upstream's flags (they only switch fusions off).
"""

from __future__ import annotations

import argparse

import torch

__all__ = ["add_fusion_arguments", "check", "config_fields", "gpu_fusions_available"]


def add_fusion_arguments(group) -> None:
    group.add_argument("--no-bias-swiglu-fusion", dest="bias_swiglu_fusion", action="store_false", default=True,
                       help="SwiGLU without megatron-core's fused (torch.compile) kernels")
    group.add_argument("--no-bias-gelu-fusion", dest="bias_gelu_fusion", action="store_false", default=True,
                       help="GELU + bias without megatron-core's fused kernel")
    group.add_argument("--no-rope-fusion", dest="apply_rope_fusion", action="store_false", default=True,
                       help="RoPE without the fused kernel (TE's, else megatron-fp4's Triton kernel)")
    group.add_argument("--cross-entropy-loss-fusion", action="store_true",
                       help="megatron-core's fused cross-entropy over the vocabulary (as upstream: off by default)")
    group.add_argument("--cross-entropy-fusion-impl", choices=["native", "te"], default="native",
                       help="native: megatron-core's compiled implementation; te: Transformer Engine's (needs TE)")
    group.add_argument("--no-fp4-quantize-fusion", dest="fp4_quantize_fusion", action="store_false", default=True,
                       help="FP4 fc2 / QKV / fc1: quantize the written-out SwiGLU / RMSNorm instead of computing it inside the quantizer")


def gpu_fusions_available() -> bool:
    """The fused kernels run here: a CUDA device and Triton (torch.compile's and ours)."""
    from ..kernels import triton_available

    return torch.cuda.is_available() and triton_available()


def check(args: argparse.Namespace) -> str | None:
    """An error message for a fusion flag this machine cannot honour, else None."""
    if args.cross_entropy_loss_fusion and args.cross_entropy_fusion_impl == "te":
        from ..megatron.specs import te_available

        if not te_available():
            return "--cross-entropy-fusion-impl te needs Transformer Engine (not installed); use --cross-entropy-fusion-impl native"
    if args.cross_entropy_loss_fusion and not gpu_fusions_available():
        return "--cross-entropy-loss-fusion needs a CUDA device (its kernels are compiled for the GPU)"
    return None


def config_fields(args: argparse.Namespace) -> dict:
    """The TransformerConfig fields these flags set (fusions on only where the GPU kernels run);
    with RoPE fusion on, also installs our fused RoPE into megatron-core where TE has none."""
    gpu = gpu_fusions_available()
    gated = bool(args.swiglu)
    activation_fusion = gpu and (args.bias_swiglu_fusion if gated else args.bias_gelu_fusion and not args.disable_bias_linear)
    rope_fusion = gpu and args.apply_rope_fusion and args.position_embedding_type == "rope"
    if rope_fusion:
        from ..megatron import rope

        rope_fusion = rope.install()
    return {
        "bias_activation_fusion": activation_fusion,
        "apply_rope_fusion": rope_fusion,
        "cross_entropy_loss_fusion": bool(args.cross_entropy_loss_fusion),
        "cross_entropy_fusion_impl": args.cross_entropy_fusion_impl,
        "fp4_quantize_fusion": gpu and bool(getattr(args, "fp4_quantize_fusion", True)),
    }
