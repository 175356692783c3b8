"""Megatron-LM's command line with our FP4 recipes.

Upstream defines ``--fp4-format {e2m1}`` (dest ``fp4``), ``--fp4-recipe {nvfp4,custom}`` (TE's
recipes), ``--fp4-param-gather`` and ``--first-last-layers-bf16`` with
``--num-layers-at-start-in-bf16`` / ``--num-layers-at-end-in-bf16``. ``add_arguments`` adds our
recipe names to ``--fp4-recipe``'s choices, ``--fp4`` (= ``--fp4-format e2m1 --fp4-recipe
paper``) and the knobs of ``megatron_fp4.training.fp4_flags``. ``claim_fp4_arguments`` then
decides who runs FP4:

- ``nvfp4`` with Transformer Engine >= 2.7 installed, and ``custom``: upstream (TE), unchanged;
  our knobs are refused there, as they would do nothing.
- ``paper``, ``direct``, ``mxfp4``, and ``nvfp4`` without such a TE: megatron-fp4. The recipe's
  name goes to ``args.megatron_fp4_recipe`` (the BF16 layers to ``args.megatron_fp4_bf16_layers``)
  and ``args.fp4`` is cleared, so upstream's TE FP4 paths (autocast, its TE version check) stay
  off; ``args.megatron_fp4_format`` keeps the format. Only plain values go into ``args``: upstream
  pickles ``args`` into every checkpoint and loads it back with ``torch.load(weights_only=True)``,
  which refuses other classes (an FP4Recipe there made upstream's own checkpoints unreadable).
  ``recipe_from_args`` rebuilds the FP4Recipe from those values wherever it is needed.
"""

from __future__ import annotations

import argparse

from ..recipe import RECIPES
from ..training.fp4_flags import add_fp4_knob_arguments, bf16_layers, fp4_knob_conflict, fp4_knobs_given, recipe_with_knobs

__all__ = ["add_arguments", "add_recipe_choices", "claim_fp4_arguments", "check_resumed_recipe", "recipe_from_args", "OUR_RECIPES", "te_runs_nvfp4"]

OUR_RECIPES = tuple(sorted(set(RECIPES) - {"bf16"}))
UPSTREAM_ONLY_RECIPES = ("custom",)


def add_recipe_choices(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Our recipe names as ``--fp4-recipe`` choices. Called on every Megatron-LM parser (upstream
    also parses the command line for in-process restart and fault tolerance, without the extra
    provider, and would reject ``--fp4-recipe paper`` there)."""
    recipe = parser._option_string_actions.get("--fp4-recipe")
    if recipe is None:
        raise RuntimeError("this Megatron-LM has no --fp4-recipe flag: megatron-fp4's patches are for core_v0.16.1")
    recipe.choices = sorted(set(recipe.choices or ()) | set(OUR_RECIPES))
    recipe.default = None  # resolved in claim_fp4_arguments: nvfp4 as upstream, paper with --fp4
    recipe.help = f"FP4 recipe: {', '.join(recipe.choices)} (megatron-fp4 runs {', '.join(OUR_RECIPES)}; nvfp4 is TE's where TE >= 2.7 is installed)"
    return parser


def add_arguments(parser: argparse.ArgumentParser, chained=None) -> argparse.ArgumentParser:
    """Upstream's ``extra_args_provider``: our recipes, ``--fp4`` and the knobs (``chained``: an
    extra-arguments provider that was there before, e.g. ModelOpt's, still applied)."""
    if chained is not None:
        parser = chained(parser)
    add_recipe_choices(parser)
    group = parser.add_argument_group(title="megatron-fp4")
    group.add_argument("--fp4", dest="megatron_fp4_shorthand", action="store_true", help="shorthand for --fp4-format e2m1 --fp4-recipe paper")
    group.add_argument(
        "--override-fp4-recipe", dest="megatron_fp4_override_recipe", action="store_true",
        help="on resume from --load, continue with this run's FP4 arithmetic where it differs from the checkpoint's "
             "(without it such a resume is refused)",
    )
    add_fp4_knob_arguments(group)
    return parser


def te_runs_nvfp4() -> bool:
    """Whether Transformer Engine (>= 2.7, NVFP4BlockScaling) is importable here."""
    try:
        import transformer_engine
        from packaging.version import Version
    except Exception:
        return False
    return Version(getattr(transformer_engine, "__version__", "0")) >= Version("2.7.0.dev0")


def claim_fp4_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Resolve FP4 ownership (see the module docstring), record the effective FP4 arithmetic in
    ``args.megatron_fp4_recipe_record`` (plain values: it travels in every checkpoint upstream
    saves) and refuse a resume from --load with other arithmetic (``check_resumed_recipe``);
    raises ValueError naming the flags. Also provides megatron-core's fused RoPE where Transformer
    Engine does not (``megatron_fp4.megatron.rope``), so upstream's default ``apply_rope_fusion``
    runs without TE."""
    _claim(args)
    args.megatron_fp4_recipe_record = _effective_record(args)
    check_resumed_recipe(args)
    if getattr(args, "apply_rope_fusion", False):  # upstream's default; without TE its fused RoPE is ours
        from ..megatron import rope

        rope.install()
    return args


def _effective_record(args: argparse.Namespace) -> dict | None:
    from ..training.checkpointing import recipe_record

    if args.megatron_fp4_recipe is not None:
        return recipe_record(recipe_from_args(args), tuple(args.megatron_fp4_bf16_layers))
    if args.fp4:  # Transformer Engine runs it
        return {"transformer_engine": args.fp4_recipe}
    return None


def _checkpoint_common_file(load: str, step: int | None) -> str | None:
    """``common.pt`` of the checkpoint upstream will resume from (torch_dist format), or None."""
    import os

    if step is None:
        tracker = os.path.join(load, "latest_checkpointed_iteration.txt")
        if not os.path.isfile(tracker):
            return None
        with open(tracker) as f:
            text = f.read().strip()
        directory = "release" if text == "release" else f"iter_{int(text):07d}" if text.isdigit() else None
    else:
        directory = f"iter_{step:07d}"
    path = os.path.join(load, directory, "common.pt") if directory else None
    return path if path and os.path.isfile(path) else None


def check_resumed_recipe(args: argparse.Namespace) -> None:
    """On a resume from --load (not --finetune), compare the checkpoint's recorded FP4 arithmetic
    with this run's: a differing field (a changed flag, FP4 <-> BF16, or a preset default that
    changed between versions) is refused unless --override-fp4-recipe. Checkpoints saved before
    the record, or in another format than torch_dist, are not compared (a line says so)."""
    from ..training.checkpointing import recipe_change_summary

    if not getattr(args, "load", None) or getattr(args, "finetune", False):
        return
    path = _checkpoint_common_file(args.load, getattr(args, "ckpt_step", None))
    if path is None:
        return
    import torch

    try:
        saved_args = torch.load(path, map_location="cpu", weights_only=False).get("args")
    except Exception as error:  # unreadable here: upstream's own load will say why
        print(f"megatron-fp4: could not read {path} to compare FP4 recipes ({type(error).__name__}: {error})", flush=True)
        return
    if saved_args is None or not hasattr(saved_args, "megatron_fp4_recipe_record"):
        print(f"megatron-fp4: {path} predates the FP4 recipe record; the FP4 arithmetic of the resume is not compared", flush=True)
        return
    summary = recipe_change_summary(saved_args.megatron_fp4_recipe_record, args.megatron_fp4_recipe_record)
    if summary is None:
        return
    if getattr(args, "megatron_fp4_override_recipe", False):
        print(f"megatron-fp4: --override-fp4-recipe: continuing with this run's FP4 arithmetic, which differs from the checkpoint's: {summary}", flush=True)
        return
    raise ValueError(
        f"--load {args.load}: the checkpoint was trained with other FP4 arithmetic: {summary}. Give the flags that "
        "reproduce its recipe (e.g. --fp4-occ-compensation exact), or --override-fp4-recipe to continue with this run's"
    )


def _full_iteration_graph(args: argparse.Namespace) -> bool:
    scopes = getattr(args, "cuda_graph_scope", None) or []
    return getattr(args, "cuda_graph_impl", "none") == "local" and any(getattr(s, "name", s) == "full_iteration" for s in scopes)


def _claim(args: argparse.Namespace) -> argparse.Namespace:
    if args.megatron_fp4_shorthand:
        if args.fp4 not in (None, "e2m1"):
            raise ValueError(f"--fp4 means --fp4-format e2m1, not {args.fp4}")
        args.fp4 = "e2m1"
        args.fp4_recipe = args.fp4_recipe or "paper"
    args.fp4_recipe = args.fp4_recipe or "nvfp4"
    args.megatron_fp4_recipe, args.megatron_fp4_bf16_layers, args.megatron_fp4_format = None, [], args.fp4
    knobs = fp4_knobs_given(args)
    if not args.fp4:
        if knobs:
            raise ValueError(f"FP4 options were given without --fp4-format e2m1 (or --fp4): {' '.join(knobs)}")
        return args
    upstream_runs_it = args.fp4_recipe in UPSTREAM_ONLY_RECIPES or (args.fp4_recipe == "nvfp4" and te_runs_nvfp4())
    if upstream_runs_it:
        if knobs:
            raise ValueError(f"--fp4-recipe {args.fp4_recipe} is Transformer Engine's recipe; megatron-fp4's options do not apply to it: {' '.join(knobs)}")
        return args
    if args.fp8:
        raise ValueError(f"--fp4-recipe {args.fp4_recipe} and --fp8-format {args.fp8} exclude each other (FP4 and FP8 training)")
    if args.fp4_param:
        raise ValueError(f"--fp4-param-gather is not supported with --fp4-recipe {args.fp4_recipe} (megatron-fp4 keeps BF16 parameters)")
    conflict = fp4_knob_conflict(args, args.num_layers)
    if conflict:
        raise ValueError(conflict)
    recipe = recipe_with_knobs(args.fp4_recipe, args)  # builds (and so validates) the recipe now
    if _full_iteration_graph(args):  # upstream's --cuda-graph-impl local --cuda-graph-scope full_iteration
        from ..training.cuda_graphs import refusal_inside_graph

        refusal = refusal_inside_graph(recipe, args.fp4_health_interval, "--cuda-graph-scope full_iteration")
        if refusal:
            raise ValueError(refusal)
        args.fp4_health_interval = 0  # its default (--log-interval) measures on the host: off under the graph
    args.megatron_fp4_recipe = args.fp4_recipe
    args.megatron_fp4_bf16_layers = list(bf16_layers(args, args.num_layers))
    args.fp4 = None  # upstream's TE FP4 paths stay off; ours run in the layer spec
    if args.fp4_gemm_backend:
        import os

        from ..gemm import BACKEND_ENV

        os.environ[BACKEND_ENV] = args.fp4_gemm_backend
    return args


def recipe_from_args(args: argparse.Namespace):
    """The FP4Recipe megatron-fp4 runs for these (claimed) arguments, or None (BF16 or TE's FP4)."""
    name = getattr(args, "megatron_fp4_recipe", None)
    return None if name is None else recipe_with_knobs(name, args)
