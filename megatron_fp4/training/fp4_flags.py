"""The FP4 command-line vocabulary, shared by our trainer and by Megatron-LM's patched ``pretrain_gpt.py``.

One place defines the recipe knobs (``--fp4-dge-k``, ``--no-fp4-occ``, ...), how they modify a
recipe, which combinations contradict each other, and which layers stay in BF16 (our
``--fp4-bf16-layers`` and upstream's ``--first-last-layers-bf16`` with
``--num-layers-at-start-in-bf16`` / ``--num-layers-at-end-in-bf16``), so both command lines mean
the same thing.
"""

from __future__ import annotations

import argparse
import dataclasses

from ..occ import COMPENSATIONS, OCCConfig
from ..recipe import DGEConfig, FP4Recipe, get_recipe

__all__ = ["positive_int", "add_fp4_knob_arguments", "add_bf16_layer_arguments", "fp4_knobs_given", "fp4_knob_conflict", "apply_fp4_knobs", "recipe_with_knobs", "bf16_layers"]


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.5 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0.5, 1), got {text}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_fp4_knob_arguments(group) -> None:
    """The recipe knobs (everything but the format/recipe selection and the BF16 layers)."""
    group.add_argument("--fp4-dge-k", type=float, default=None, help="DGE sharpness k (paper: 5)")
    group.add_argument(
        "--fp4-dge-max-derivative", type=float, default=None,
        help="clamp of the DGE derivative f'(W/s) (paper: 3; >= 1); with --fp4-dge-k, DGE's two settings",
    )
    group.add_argument("--no-fp4-dge", action="store_true", help="straight-through weight gradients")
    group.add_argument("--fp4-occ-alpha", type=_fraction, default=None, help="OCC quantile (paper: 0.99)")
    group.add_argument("--no-fp4-occ", action="store_true", help="no outlier clamping")
    group.add_argument("--no-fp4-occ-compensation", action="store_true", help="clamp without the sparse residual")
    group.add_argument(
        "--no-fp4-occ-wgrad-compensation", action="store_true",
        help="compensate the forward only: the weight gradient uses the clamped activation and the residual is not kept for backward",
    )
    group.add_argument(
        "--fp4-occ-compensation", choices=list(COMPENSATIONS), default=None,
        help="how the clamped entries are compensated: all exactly (exact), the hot channels' (hot_channels), all in FP8 (fp8), "
        "or all as E4M3 inside the FP8 activation operand, with no extra GEMM (inline); see megatron_fp4.occ",
    )
    group.add_argument("--fp4-occ-hot-channel-fraction", type=_share, default=None, help="share of channels compensated with hot_channels (default 1/32)")
    group.add_argument("--fp4-bf16-layers", type=positive_int, nargs="+", default=[], help="1-based layers kept in BF16")
    group.add_argument("--fp4-gemm-backend", choices=["auto", "reference", "hopper", "blackwell"], default=None, help="GEMM backend (default: auto, or MEGATRON_FP4_GEMM_BACKEND)")
    group.add_argument("--no-fp4-fold-backward-scales", action="store_true", help="dgrad/wgrad as Q_g(dY)·Q(W) without folding the row scales into dY (reference GEMMs)")
    group.add_argument("--fp4-health-interval", type=int, default=None, help="per-layer FP4 health every N iterations (default: --log-interval; 0: off)")
    group.add_argument(
        "--fp4-rht", action=argparse.BooleanOptionalAction, default=None,
        help="16x16 random Hadamard transform on both wgrad inputs (block recipes; default: on for nvfp4, off for mxfp4)",
    )
    group.add_argument("--fp4-rht-seed", type=int, default=None, help="sign seed of the Hadamard transform (default 0)")
    group.add_argument(
        "--fp4-stochastic-rounding", action=argparse.BooleanOptionalAction, default=None,
        help="stochastic rounding of the FP4 output gradients (block recipes; default: on for nvfp4, off for mxfp4)",
    )
    group.add_argument(
        "--fp4-grad-amax", choices=["current", "delayed"], default=None,
        help="output-gradient FP8 scales from this gradient's maximum (current, default) or the layer's previous "
        "backward's, falling back where it would saturate (delayed: dY read once; opt-in: on an H200 its quantizer is "
        "0.74 of copy bandwidth against 0.58, within noise end to end)",
    )
    group.add_argument(
        "--fp4-grad-amax-margin", type=int, default=None, metavar="BINADES",
        help="delayed scaling's headroom: the previous maximum's scale serves gradients up to 2^BINADES times larger "
        "before falling back to the current scale (default 1; 0 = the previous maximum exactly)",
    )
    group.add_argument(
        "--fp4-2d-weight-blocks", action=argparse.BooleanOptionalAction, default=None,
        help="nvfp4 weights in 16x16 tiles (W and W^T alike; default on) instead of 1x16 blocks",
    )


def add_bf16_layer_arguments(group) -> None:
    """Upstream's layer selection (Megatron-LM defines these itself; our trainer adds them here)."""
    group.add_argument("--first-last-layers-bf16", action="store_true", help="keep the first and last transformer layers in BF16")
    group.add_argument("--num-layers-at-start-in-bf16", type=_non_negative_int, default=1, help="with --first-last-layers-bf16")
    group.add_argument("--num-layers-at-end-in-bf16", type=_non_negative_int, default=1, help="with --first-last-layers-bf16")


def fp4_knobs_given(args) -> list[str]:
    """The knob flags present on a command line (to refuse them where FP4 is off)."""
    given = {
        "--fp4-dge-k": args.fp4_dge_k is not None, "--no-fp4-dge": args.no_fp4_dge,
        "--fp4-dge-max-derivative": args.fp4_dge_max_derivative is not None,
        "--fp4-occ-alpha": args.fp4_occ_alpha is not None, "--no-fp4-occ": args.no_fp4_occ,
        "--no-fp4-occ-compensation": args.no_fp4_occ_compensation, "--fp4-occ-compensation": bool(args.fp4_occ_compensation),
        "--no-fp4-occ-wgrad-compensation": args.no_fp4_occ_wgrad_compensation,
        "--fp4-occ-hot-channel-fraction": args.fp4_occ_hot_channel_fraction is not None,
        "--fp4-bf16-layers": bool(args.fp4_bf16_layers), "--fp4-gemm-backend": bool(args.fp4_gemm_backend),
        "--no-fp4-fold-backward-scales": args.no_fp4_fold_backward_scales,
        "--fp4-rht": args.fp4_rht is not None, "--fp4-rht-seed": args.fp4_rht_seed is not None,
        "--fp4-stochastic-rounding": args.fp4_stochastic_rounding is not None,
        "--fp4-2d-weight-blocks": args.fp4_2d_weight_blocks is not None,
        "--fp4-grad-amax": args.fp4_grad_amax is not None, "--fp4-grad-amax-margin": args.fp4_grad_amax_margin is not None,
    }
    return [flag for flag, present in given.items() if present]


def fp4_knob_conflict(args, num_layers: int) -> str | None:
    """A message for knobs that contradict each other or the model, else None."""
    if args.fp4_dge_k is not None and args.no_fp4_dge:
        return "--fp4-dge-k and --no-fp4-dge contradict each other"
    if args.fp4_dge_max_derivative is not None and args.no_fp4_dge:
        return "--fp4-dge-max-derivative and --no-fp4-dge contradict each other"
    if args.fp4_dge_max_derivative is not None and not args.fp4_dge_max_derivative >= 1.0:
        return f"--fp4-dge-max-derivative {args.fp4_dge_max_derivative}: must be >= 1 (the derivative's clamp; the paper uses 3)"
    if args.fp4_dge_k is not None and not args.fp4_dge_k >= 1.0:
        return f"--fp4-dge-k {args.fp4_dge_k}: must be >= 1 (k = 1 is the straight-through estimator; the paper uses 5)"
    if args.fp4_occ_alpha is not None and args.no_fp4_occ:
        return "--fp4-occ-alpha and --no-fp4-occ contradict each other"
    if (args.fp4_occ_compensation or args.fp4_occ_hot_channel_fraction is not None) and (args.no_fp4_occ or args.no_fp4_occ_compensation):
        return "--fp4-occ-compensation / --fp4-occ-hot-channel-fraction need OCC with compensation (drop --no-fp4-occ / --no-fp4-occ-compensation)"
    if args.no_fp4_occ_wgrad_compensation and (args.no_fp4_occ or args.no_fp4_occ_compensation):
        return "--no-fp4-occ-wgrad-compensation needs OCC with compensation (drop --no-fp4-occ / --no-fp4-occ-compensation)"
    if args.fp4_occ_hot_channel_fraction is not None and (args.fp4_occ_compensation or OCCConfig().compensation) != "hot_channels":
        return "--fp4-occ-hot-channel-fraction applies to --fp4-occ-compensation hot_channels only (it would change nothing here)"
    if args.no_fp4_occ_wgrad_compensation and (args.fp4_occ_compensation or OCCConfig().compensation) == "inline":
        return ("--no-fp4-occ-wgrad-compensation needs --fp4-occ-compensation fp8, exact or hot_channels "
                "(inline, the default, carries the outliers in the operand that the weight gradient reuses: it always compensates both)")
    if any(layer > num_layers for layer in args.fp4_bf16_layers):
        return f"--fp4-bf16-layers {args.fp4_bf16_layers}: layers are 1..{num_layers} (--num-layers)"
    if getattr(args, "first_last_layers_bf16", False) and args.num_layers_at_start_in_bf16 + args.num_layers_at_end_in_bf16 > num_layers:
        return (
            f"--num-layers-at-start-in-bf16 {args.num_layers_at_start_in_bf16} + --num-layers-at-end-in-bf16 "
            f"{args.num_layers_at_end_in_bf16} exceed --num-layers {num_layers}"
        )
    return None


def apply_fp4_knobs(recipe: FP4Recipe, args) -> FP4Recipe:
    """``recipe`` with the knobs of ``args`` applied (the recipe's name stays)."""
    if args.no_fp4_dge:
        recipe = recipe.replace(dge=DGEConfig(enabled=False))
    else:
        if args.fp4_dge_k is not None:
            recipe = recipe.replace(dge=dataclasses.replace(recipe.dge, enabled=True, k=args.fp4_dge_k))
        if args.fp4_dge_max_derivative is not None:
            recipe = recipe.replace(dge=dataclasses.replace(recipe.dge, enabled=True, max_derivative=args.fp4_dge_max_derivative))
    occ = recipe.occ
    if args.no_fp4_occ:
        occ = dataclasses.replace(occ, enabled=False)
    else:
        if args.fp4_occ_alpha is not None:
            occ = dataclasses.replace(occ, enabled=True, alpha=args.fp4_occ_alpha)
        if args.no_fp4_occ_compensation:
            occ = dataclasses.replace(occ, compensate=False)
        if args.fp4_occ_compensation:
            occ = dataclasses.replace(occ, compensation=args.fp4_occ_compensation)
        if args.fp4_occ_hot_channel_fraction is not None:
            occ = dataclasses.replace(occ, hot_channel_fraction=args.fp4_occ_hot_channel_fraction)
        if args.no_fp4_occ_wgrad_compensation:
            occ = dataclasses.replace(occ, compensate_wgrad=False)
    recipe = recipe.replace(occ=occ, fold_backward_scales=not args.no_fp4_fold_backward_scales)
    if getattr(args, "fp4_grad_amax", None):
        recipe = recipe.replace(grad_amax=args.fp4_grad_amax)  # validated: names the flag for block recipes
    margin = getattr(args, "fp4_grad_amax_margin", None)
    if margin is not None:
        if recipe.grad_amax != "delayed":
            raise ValueError("--fp4-grad-amax-margin applies to --fp4-grad-amax delayed (current scaling has no history to keep headroom over)")
        recipe = recipe.replace(grad_amax_margin=margin)  # validated: names the flag and the allowed range
    return _apply_block_recipe_switches(recipe, args)


def _apply_block_recipe_switches(recipe: FP4Recipe, args) -> FP4Recipe:
    """--fp4-rht, --fp4-rht-seed, --fp4-stochastic-rounding, --fp4-2d-weight-blocks (NVIDIA's recipe
    components; the block recipes only, refused elsewhere naming the flag)."""
    block_recipe = recipe.wgrad_along_tokens
    for flag, value in (("--fp4-rht", args.fp4_rht), ("--fp4-rht-seed", args.fp4_rht_seed), ("--fp4-stochastic-rounding", args.fp4_stochastic_rounding)):
        if value is not None and not block_recipe:
            raise ValueError(f"{flag} applies to the block recipes (nvfp4, mxfp4), not --fp4-recipe {recipe.name}")
    if args.fp4_rht is not None:
        recipe = recipe.replace(wgrad_hadamard=args.fp4_rht)
    if args.fp4_rht_seed is not None:
        recipe = recipe.replace(hadamard_seed=args.fp4_rht_seed)
    if args.fp4_stochastic_rounding is not None:
        recipe = recipe.replace(
            dgrad_grad_output=dataclasses.replace(recipe.dgrad_grad_output, stochastic_rounding=args.fp4_stochastic_rounding),
            wgrad_grad_output=dataclasses.replace(recipe.wgrad_grad_output, stochastic_rounding=args.fp4_stochastic_rounding),
        )
    if args.fp4_2d_weight_blocks is not None:
        if recipe.fprop_weight.granularity not in ("nvfp4", "nvfp4_2d"):
            raise ValueError(f"--fp4-2d-weight-blocks applies to --fp4-recipe nvfp4, not {recipe.name}")
        granularity = "nvfp4_2d" if args.fp4_2d_weight_blocks else "nvfp4"
        recipe = recipe.replace(
            fprop_weight=dataclasses.replace(recipe.fprop_weight, granularity=granularity),
            dgrad_weight=dataclasses.replace(recipe.dgrad_weight, granularity=granularity),
        )
    return recipe


def recipe_with_knobs(name: str, args) -> FP4Recipe:
    """The named recipe (``paper``, ``direct``, ``nvfp4``, ``mxfp4``) with the knobs applied."""
    return apply_fp4_knobs(get_recipe(name), args)


def bf16_layers(args, num_layers: int) -> tuple[int, ...]:
    """1-based transformer layers kept in BF16: --fp4-bf16-layers plus, with
    --first-last-layers-bf16, the first --num-layers-at-start-in-bf16 and the last
    --num-layers-at-end-in-bf16 layers."""
    layers = set(args.fp4_bf16_layers)
    if getattr(args, "first_last_layers_bf16", False):
        layers.update(range(1, args.num_layers_at_start_in_bf16 + 1))
        layers.update(range(num_layers - args.num_layers_at_end_in_bf16 + 1, num_layers + 1))
    return tuple(sorted(layers))
