"""Megatron-LM's own ``pretrain_gpt.py`` with our FP4 recipes: the logic behind ``patches/``.

The patch series in ``patches/megatron-lm/<tag>/`` only wires calls into this package, so a new
upstream tag means re-wiring, not re-writing:

- ``add_arguments``: the extra-arguments provider (``--fp4`` and the recipe knobs), and
  ``add_recipe_choices``: our recipe names as ``--fp4-recipe`` choices in every upstream parser;
- ``claim_fp4_arguments``: at the start of upstream's ``validate_args``, decides whether FP4 is
  ours (`paper`, `direct`, `mxfp4`, and `nvfp4` where Transformer Engine cannot run it) or
  upstream's (TE's NVFP4), and checks the combinations;
- ``transformer_layer_spec`` / ``finish_model``: in ``gpt_builders.gpt_builder``, our FP4 layer
  spec (local or TE) per layer, and the layer names health logs use;
- ``health_collection`` / ``log_health``: around upstream's ``train_step`` and after its
  ``training_log``: per-layer FP4 health to the log, TensorBoard and W&B;
- ``dataset_helpers_compiled``: upstream compiles its dataset helpers with ``make`` at start-up;
  the megatron-core wheel ships them compiled and without a Makefile, so the compile is skipped
  when they import.

``python -m megatron_fp4.megatron_lm.checkout`` makes a patched Megatron-LM.
"""

from .arguments import add_arguments, add_recipe_choices, claim_fp4_arguments, recipe_from_args
from .model import finish_model, transformer_layer_spec
from .runtime import dataset_helpers_compiled
from .telemetry import health_collection, log_health

__all__ = [
    "add_arguments", "add_recipe_choices", "claim_fp4_arguments", "recipe_from_args", "transformer_layer_spec", "finish_model",
    "health_collection", "log_health", "dataset_helpers_compiled",
]
