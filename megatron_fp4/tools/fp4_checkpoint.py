"""Packed FP4 weights in safetensors: the layout, the packer and a loader that dequantizes.

Layout (format "megatron-fp4-packed", version 1), for every linear weight W [N, K] of the
LLaMA model (q/k/v/o_proj, gate/up/down_proj; Hugging Face names), quantized with the recipe's
forward weight quantizer (``fprop_weight``):
  ``<W>.fp4_codes``        uint8 [N, K/2]: E2M1 codes ``sign << 3 | magnitude index`` (index into
                           0, 0.5, 1, 1.5, 2, 3, 4, 6), two per byte, element 2i in the low nibble
                           (the ``torch.float4_e2m1fn_x2`` layout);
  ``<W>.fp4_scale``        the decode scales: fp32 [N, 1] (``row``: one per output channel),
                           E4M3 bytes [N, K/16] (``nvfp4``) or E8M0 bytes [N, K/32] (``mxfp4``);
  ``<W>.fp4_global_scale`` fp32 [] (``nvfp4`` only): multiplies the E4M3 block scales.
  W ≈ decode(codes) * scale (block scales repeated along K). Every other tensor (embeddings,
  norms, LM head) is stored as is. The metadata (safetensors header key "megatron_fp4", and
  ``config.json["megatron_fp4"]``) names the format, version, recipe, granularity and weights.
"""

from __future__ import annotations

import json
import os

import torch

from ..quantize import QuantizedTensor, quantize
from ..recipe import get_recipe

__all__ = ["FORMAT", "LINEAR_WEIGHTS", "pack_state", "load_packed"]

FORMAT = "megatron-fp4-packed"
LINEAR_WEIGHTS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _is_linear(name: str) -> bool:
    return name.endswith(".weight") and name.split(".")[-2] in LINEAR_WEIGHTS


def pack_state(tensors: dict[str, torch.Tensor], recipe_name: str, dtype: torch.dtype) -> tuple[dict, dict]:
    """(safetensors dict, metadata): linear weights packed with ``recipe_name``'s weight quantizer."""
    spec = get_recipe(recipe_name).fprop_weight
    if spec.dtype != "fp4":
        raise SystemExit(f"error: --fp4-recipe {recipe_name}: its weight format {spec.describe()} is not FP4")
    packed, names = {}, []
    for name, tensor in tensors.items():
        if not _is_linear(name):
            packed[name] = tensor.to(dtype)
            continue
        q = quantize(tensor.float(), spec, check_finite=True, name=name)
        packed[name + ".fp4_codes"] = q.data
        packed[name + ".fp4_scale"] = q.scale.view(torch.uint8) if q.scale.dtype == torch.float8_e4m3fn else q.scale
        if q.global_scale is not None:
            packed[name + ".fp4_global_scale"] = q.global_scale.reshape(())
        names.append(name)
    metadata = {"format": FORMAT, "version": 1, "recipe": recipe_name, "granularity": spec.granularity, "fp4_format": spec.fp4_format, "linear_weights": names}
    return {k: v.contiguous() for k, v in packed.items()}, metadata


def load_packed(directory: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The Hugging Face state dict of a packed export, FP4 weights dequantized to ``dtype``."""
    from ..quantize import QuantSpec
    from .convert_checkpoint import read_safetensors

    with open(os.path.join(directory, "config.json")) as f:
        metadata = json.load(f).get("megatron_fp4")
    if not metadata or metadata.get("format") != FORMAT:
        raise ValueError(f"{directory}: config.json has no megatron_fp4 metadata of format {FORMAT!r}")
    if metadata["version"] != 1:
        raise ValueError(f"{directory}: packed format version {metadata['version']} (this loader reads 1)")
    spec = QuantSpec("fp4", metadata["granularity"], metadata["fp4_format"])
    stored = read_safetensors(directory)
    state = {k: v.to(dtype) for k, v in stored.items() if not k.split(".")[-1].startswith("fp4_")}
    for name in metadata["linear_weights"]:
        codes, scale = stored[name + ".fp4_codes"], stored[name + ".fp4_scale"]
        if spec.granularity == "nvfp4":
            scale = scale.view(torch.float8_e4m3fn)
        shape = torch.Size((codes.shape[0], codes.shape[1] * 2))
        q = QuantizedTensor(codes, scale, stored.get(name + ".fp4_global_scale"), spec, shape, dtype)
        state[name] = q.dequantize()
    return state
