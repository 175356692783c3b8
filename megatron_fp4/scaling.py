"""Scale factors: how one fp32 number per group maps a group of values onto the FP4 grid.

Paper §3 (vector-wise quantization): activations get one scale per token (row of A [tokens, K]),
weights one per output channel (row of W [out, K]), so both factor out of ``A @ W^T``.
Tensor-wise scaling is the paper's ablation baseline. The block recipes follow their public
definitions:

* NVFP4 (NVIDIA): 16-element blocks along K; each block's decode scale is an FP8 E4M3 number
  ``e4m3(amax_block / 6 / s_tensor)`` times one fp32 tensor scale ``s_tensor = amax / (6 * 448)``.
* NVFP4 with 2D weight blocks (NVIDIA's training recipe): one E4M3 scale per 16x16 tile of W
  [out, K] (times the same fp32 tensor scale), so W and W^T quantize to the same values and one
  quantized weight serves fprop (blocks along K) and dgrad (blocks along out).
* MXFP4 (OCP Microscaling Formats v1.0, §5.3 and §6.3): 32-element blocks along K; the shared
  scale is the power of two ``2^(floor(log2(amax_block)) - emax_elem)`` with ``emax_elem = 2``
  for E2M1, stored as E8M0 (biased exponent, bias 127; 0xFF is NaN).

Divisions are tensor by tensor: CUDA turns division by a Python scalar into a multiplication by
its reciprocal, which can differ in the last bit, and the scales must be identical on CPU and GPU.

Every function here returns *decode* scales: ``x ≈ fp4_value * scale``. A group whose amax is 0
gets scale 1 (it quantizes to zeros). A group holding NaN/Inf gets a NaN scale, so it dequantizes
to NaN: non-finite input propagates instead of becoming a finite number.
"""

from __future__ import annotations

import torch

from .formats import FP4Format

__all__ = [
    "GRANULARITIES",
    "BLOCK_SIZES",
    "E4M3_MAX",
    "absmax_scale",
    "nvfp4_scales",
    "nvfp4_2d_scales",
    "mxfp4_scales",
    "e8m0_to_fp32",
]

GRANULARITIES = ("tensor", "row", "nvfp4", "nvfp4_2d", "mxfp4")
BLOCK_SIZES = {"nvfp4": 16, "nvfp4_2d": 16, "mxfp4": 32}
E4M3_MAX = 448.0
MX_E2M1_EMAX = 2  # exponent of E2M1's largest normal (6 = 1.5 * 2^2), OCP MX v1.0 table 1


def _finite_or_nan(amax: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(amax), scale, torch.full_like(scale, float("nan")))


def absmax_scale(amax: torch.Tensor, max_value: float, power_of_two: bool = False) -> torch.Tensor:
    """Decode scale ``amax / max_value`` (or its power-of-two round-up) per group.

    ``power_of_two=True`` is the FP8-LM / MS-AMP rule ``sf = 2^floor(log2(max_value / amax))``,
    decode scale ``1 / sf``: values never exceed the grid and scaling is exact in binary.
    """
    amax = amax.float()
    positive = amax > 0
    safe = torch.where(positive, amax, torch.ones_like(amax))
    max_tensor = torch.full_like(safe, max_value)  # tensor/tensor: true division on every device
    if power_of_two:
        scale = torch.exp2(-torch.floor(torch.log2(max_tensor / safe)))
    else:
        scale = safe / max_tensor
    scale = torch.where(positive, scale, torch.ones_like(scale))  # an all-zero group: scale 1
    return _finite_or_nan(amax, scale)


def _block_amax(x2d: torch.Tensor, block: int) -> torch.Tensor:
    rows, cols = x2d.shape
    return x2d.float().abs().reshape(rows, cols // block, block).amax(dim=-1)


def nvfp4_scales(x2d: torch.Tensor, fmt: FP4Format) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4 scales of a [rows, K] tensor: (E4M3 block scales [rows, K/16], fp32 tensor scale)."""
    tensor_amax = x2d.float().abs().amax()
    tensor_scale = absmax_scale(tensor_amax, fmt.max_value * E4M3_MAX)
    block_amax = _block_amax(x2d, BLOCK_SIZES["nvfp4"])
    block_target = block_amax / torch.full_like(block_amax, fmt.max_value) / tensor_scale
    block_scale = block_target.clamp_max(E4M3_MAX).to(torch.float8_e4m3fn)  # RNE, NaN stays NaN
    return block_scale, tensor_scale


def nvfp4_2d_scales(x2d: torch.Tensor, fmt: FP4Format) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4 scales of 16x16 tiles of a [rows, K] tensor: (E4M3 [rows/16, K/16], fp32 tensor scale)."""
    block = BLOCK_SIZES["nvfp4_2d"]
    rows, cols = x2d.shape
    tensor_amax = x2d.float().abs().amax()
    tensor_scale = absmax_scale(tensor_amax, fmt.max_value * E4M3_MAX)
    tile_amax = x2d.float().abs().reshape(rows // block, block, cols // block, block).amax(dim=(1, 3))
    tile_target = tile_amax / torch.full_like(tile_amax, fmt.max_value) / tensor_scale
    return tile_target.clamp_max(E4M3_MAX).to(torch.float8_e4m3fn), tensor_scale


def mxfp4_scales(x2d: torch.Tensor) -> torch.Tensor:
    """MXFP4 shared scales of a [rows, K] tensor as E8M0 bytes [rows, K/32] (uint8)."""
    amax = _block_amax(x2d, BLOCK_SIZES["mxfp4"])
    _, exponent = torch.frexp(torch.where(amax > 0, amax, torch.ones_like(amax)))
    shared = (exponent.to(torch.int32) - 1 - MX_E2M1_EMAX).clamp(-127, 127)  # floor(log2 amax) - emax
    shared = torch.where(amax > 0, shared, torch.full_like(shared, -127))
    biased = (shared + 127).to(torch.uint8)
    return torch.where(torch.isfinite(amax), biased, torch.full_like(biased, 0xFF))


def e8m0_to_fp32(biased: torch.Tensor) -> torch.Tensor:
    """Decode E8M0 bytes: 2^(byte - 127), and 0xFF is NaN."""
    value = torch.exp2(biased.to(torch.float32) - 127.0)
    return torch.where(biased == 0xFF, torch.full_like(value, float("nan")), value)
