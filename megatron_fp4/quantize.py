"""How a tensor becomes low precision: specs, the quantized-tensor container, quantize/dequantize.

A ``QuantSpec`` names one GEMM operand's format (FP4 with a granularity, FP8, or high precision).
``quantize`` turns a tensor into a ``QuantizedTensor`` holding what a real kernel would keep:
packed 4-bit codes (two per byte) or FP8 bytes, plus the encoded scales. This is the exact
reference that every fast path is tested against.

Quantization is always along the last dimension of the tensor as it is laid out: rows of
A [tokens, K] are tokens (token-wise scaling, paper §3), rows of W [out, K] are output channels
(channel-wise scaling), blocks run along K.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from .formats import E2M1, FP4Format, decode, encode, encode_stochastic, get_format, pack_codes, unpack_codes
from .scaling import BLOCK_SIZES, GRANULARITIES, absmax_scale, e8m0_to_fp32, mxfp4_scales, nvfp4_2d_scales, nvfp4_scales

__all__ = [
    "ELEMENT_DTYPES",
    "QuantSpec",
    "QuantizedTensor",
    "NonFiniteError",
    "check_finite_enabled",
    "quantize",
    "fake_quantize",
]

FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
HIGH_PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
ELEMENT_DTYPES = ("fp4", *FP8_DTYPES, *HIGH_PRECISION_DTYPES)
FP8_GRANULARITIES = ("tensor", "row")


@dataclass(frozen=True)
class QuantSpec:
    """The format of one GEMM operand.

    dtype: ``fp4`` | ``fp8_e4m3`` | ``fp8_e5m2`` | ``bf16`` | ``fp32`` (the last two: no quantization,
    the operand is only cast). granularity: ``tensor`` | ``row`` (per token / per output channel) |
    ``nvfp4`` | ``nvfp4_2d`` (16x16 tiles: W and W^T alike) | ``mxfp4`` (block recipes, FP4 E2M1
    only). power_of_two_scale: round tensor/row scales up to a power of two (the authors' FP8-LM
    rule) instead of the exact ``amax / max``. stochastic_rounding: FP4 elements rounded
    stochastically (unbiased; NVIDIA's recipe does this for gradients) instead of to nearest.
    """

    dtype: str = "fp4"
    granularity: str = "row"
    fp4_format: str = "e2m1"
    power_of_two_scale: bool = False
    stochastic_rounding: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in ELEMENT_DTYPES:
            raise ValueError(f"QuantSpec.dtype={self.dtype!r}; allowed: {list(ELEMENT_DTYPES)}")
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"QuantSpec.granularity={self.granularity!r}; allowed: {list(GRANULARITIES)}")
        fmt = get_format(self.fp4_format)  # raises on an unknown name
        if self.dtype in FP8_DTYPES and self.granularity not in FP8_GRANULARITIES:
            raise ValueError(
                f"QuantSpec.granularity={self.granularity!r} with dtype={self.dtype!r}; "
                f"FP8 operands allow {list(FP8_GRANULARITIES)}"
            )
        if self.stochastic_rounding and self.dtype != "fp4":
            raise ValueError(f"QuantSpec.stochastic_rounding applies to FP4 elements, got dtype={self.dtype!r}")
        if self.granularity in BLOCK_SIZES:
            if self.dtype != "fp4" or fmt is not E2M1:
                raise ValueError(
                    f"QuantSpec.granularity={self.granularity!r} is defined for FP4 E2M1 only, "
                    f"got dtype={self.dtype!r} fp4_format={self.fp4_format!r}"
                )
            if self.power_of_two_scale:
                raise ValueError(
                    f"QuantSpec.power_of_two_scale applies to tensor/row scales, not {self.granularity!r}"
                )

    @property
    def is_quantized(self) -> bool:
        return self.dtype not in HIGH_PRECISION_DTYPES

    @property
    def format(self) -> FP4Format:
        return get_format(self.fp4_format)

    @property
    def block_size(self) -> int | None:
        return BLOCK_SIZES.get(self.granularity)

    def describe(self) -> str:
        if not self.is_quantized:
            return self.dtype
        name = self.fp4_format if self.dtype == "fp4" else self.dtype
        return f"{name}/{self.granularity}" + ("/pow2" if self.power_of_two_scale else "") + ("/SR" if self.stochastic_rounding else "")


@dataclass(frozen=True)
class QuantizedTensor:
    """A tensor in a low-precision format, stored the way a kernel would keep it.

    data: packed FP4 codes (uint8, [rows, K/2]); FP8 elements ([rows, K]); or the high-precision
    tensor itself. scale: decode scales, fp32 [rows, 1] (row), [1, 1] (tensor), E4M3 [rows, K/16]
    (nvfp4) or E8M0 bytes [rows, K/32] (mxfp4); None when not quantized, or when the scales were
    folded into the other GEMM operand (unit scale, ``without_scale``). global_scale: the fp32
    NVFP4 tensor scale. shape/dtype: the original tensor's. fp8: optionally the same FP4 values
    as FP8 E4M3 elements [rows, K] (every E2M1 value is exact in E4M3), the operand form of FP8
    tensor cores; the fused kernels write it next to the packed codes. outliers_e4m3: ``data``
    holds FP8 E4M3 elements [rows, K] instead of packed codes: the E2M1 values of the clamped
    activation except at OCC's clamped entries, which hold their true value x / scale rounded to
    E4M3 (the ``inline`` compensation, ``megatron_fp4.occ.quantize_with_inline_outliers``).
    bf16: optionally the block-scaled values E2M1 x block scale (NVFP4 / MXFP4, without the NVFP4
    tensor scale) as BF16 [rows, K], exact (``kernels.block_gemm``): the operand form of the
    block-scaled GEMM, written by the fused quantizers for an operand its GEMM consumes at once,
    so that no separate decode pass reads the codes again. Dropped before an operand is saved.
    An operand consumed only by its GEMM may hold ``bf16`` alone, ``data`` None: the quantizer
    did not write its codes (``kernels.quantize_fast(..., codes=False)``); its element values are
    then read back from ``bf16`` (exactly: value x block scale / block scale).
    """

    data: torch.Tensor | None
    scale: torch.Tensor | None
    global_scale: torch.Tensor | None
    spec: QuantSpec
    shape: torch.Size
    dtype: torch.dtype
    fp8: torch.Tensor | None = None
    outliers_e4m3: bool = False
    bf16: torch.Tensor | None = None

    @property
    def operand_shape(self) -> tuple[int, int]:
        """(rows, K) of the 2-D operand (packed codes hold K / 2 bytes per row)."""
        if self.data is None:
            return tuple(self.bf16.shape)
        if self.spec.dtype == "fp4" and not self.outliers_e4m3:
            return self.data.shape[0], self.data.shape[1] * 2
        return tuple(self.data.shape)

    @property
    def device(self) -> torch.device:
        return (self.data if self.data is not None else self.bf16).device

    def element_values(self) -> torch.Tensor:
        """The unscaled element values as fp32 [rows, K] (FP4 grid or FP8 values)."""
        if self.data is None:  # BF16 values only: E2M1 value x block scale, divided back exactly
            block = self._block_scale()
            return torch.where(block == 0, torch.zeros_like(block), self.bf16.float() / torch.where(block == 0, torch.ones_like(block), block))
        if self.spec.dtype == "fp4" and not self.outliers_e4m3:
            return decode(unpack_codes(self.data), self.spec.format)
        return self.data.float()

    def decode_scale(self) -> torch.Tensor:
        """fp32 decode scale per element group, broadcastable against [rows, K]."""
        if self.spec.granularity not in ("nvfp4", "nvfp4_2d", "mxfp4"):
            return self.scale
        return self._block_scale(self.global_scale if self.spec.granularity != "mxfp4" else None)

    def _block_scale(self, global_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The NVFP4 / MXFP4 block scales as fp32 [rows, K] (times ``global_scale`` if given)."""
        if self.spec.granularity == "mxfp4":
            block = e8m0_to_fp32(self.scale)
        else:
            block = self.scale.float()
        if global_scale is not None:
            block = block * global_scale
        if self.spec.granularity == "nvfp4_2d":
            block = block.repeat_interleave(self.spec.block_size, dim=0)
        return block.repeat_interleave(self.spec.block_size, dim=-1)

    def dequantize_2d(self) -> torch.Tensor:
        """fp32 [rows, K] approximation of the original tensor (the bare element values when the
        scales were folded elsewhere: see ``without_scale``)."""
        if not self.spec.is_quantized:
            return self.data.float().reshape(-1, self.shape[-1])
        if self.scale is None:
            return self.element_values()
        return self.element_values() * self.decode_scale()

    def without_scale(self) -> "QuantizedTensor":
        """The same elements with unit scale (scale None): the GEMM operand once the scales have
        been folded into the other operand (see ``megatron_fp4.backward``)."""
        return dataclasses.replace(self, scale=None, global_scale=None)

    def dequantize(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The approximation in the original shape and ``dtype`` (default: the original dtype)."""
        return self.dequantize_2d().reshape(self.shape).to(dtype or self.dtype)

    @property
    def nbytes(self) -> int:
        """Bytes held (elements + scales): what saving this for backward costs."""
        tensors = (self.data, self.scale, self.global_scale, self.bf16 if self.data is None else None)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class NonFiniteError(ValueError):
    """NaN or Inf found in a tensor being quantized (raised only in check-finite mode)."""


def check_finite_enabled() -> bool:
    """Debug mode from the environment: ``MEGATRON_FP4_CHECK_FINITE=1``."""
    return os.environ.get("MEGATRON_FP4_CHECK_FINITE", "0") not in ("", "0", "false", "False")


def _raise_if_not_finite(x: torch.Tensor, name: str) -> None:
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise NonFiniteError(
            f"{name}: {int(torch.isnan(x).sum())} NaN and {int(torch.isinf(x).sum())} Inf values "
            f"in a tensor being quantized (shape {tuple(x.shape)}, first at index {first})"
        )


def _as_rows(x: torch.Tensor, spec: QuantSpec, name: str) -> torch.Tensor:
    if x.dim() == 0:
        raise ValueError(f"{name}: cannot quantize a 0-d tensor")
    x2d = x.reshape(-1, x.shape[-1])
    block = spec.block_size
    if block is not None and x2d.shape[-1] % block:
        raise ValueError(
            f"{name}: shape {tuple(x.shape)} has last dim {x2d.shape[-1]}, not a multiple of the "
            f"{spec.granularity} block size {block} (--fp4-recipe with {spec.granularity} blocks needs it)"
        )
    if spec.granularity == "nvfp4_2d" and x2d.shape[0] % block:
        raise ValueError(f"{name}: shape {tuple(x.shape)} has {x2d.shape[0]} rows, not a multiple of the 16x16 nvfp4_2d tiles (--no-fp4-2d-weight-blocks)")
    if spec.dtype == "fp4" and x2d.shape[-1] % 2:
        raise ValueError(f"{name}: shape {tuple(x.shape)} needs an even last dim to pack two FP4 codes per byte")
    return x2d


def _group_amax(x2d: torch.Tensor, granularity: str) -> torch.Tensor:
    absval = x2d.float().abs()
    if granularity == "tensor":
        return absval.amax().reshape(1, 1)
    return absval.amax(dim=-1, keepdim=True)


def encode_multiplier(scale: torch.Tensor) -> torch.Tensor:
    """1 / scale (one IEEE division per group), 0 where scale is 0 (an NVFP4 block whose E4M3
    scale underflowed). Encoding multiplies each element by it instead of dividing it by the scale,
    as kernels do (a division per element costs a fused quantizer ~10 instructions, a quarter of
    its budget at memory bandwidth); the two differ only when a quotient lies within an ulp of a
    rounding boundary of the target grid."""
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.where(scale == 0, torch.zeros_like(scale), torch.ones_like(safe) / safe)


def quantize(
    x: torch.Tensor, spec: QuantSpec, *, check_finite: bool | None = None, name: str = "tensor",
    generator: torch.Generator | None = None, seed: torch.Tensor | None = None,
) -> QuantizedTensor:
    """Quantize ``x`` to ``spec`` (exact PyTorch reference; round to nearest, ties to even, or
    stochastically where the spec says so: element i of the [rows, K] operand rounds with the
    Philox number of (``seed``, i), the seed drawn from ``generator`` or torch's global stream
    when not given; ``megatron_fp4.stochastic``, the fused kernels compute the same numbers).

    check_finite: raise ``NonFiniteError`` naming ``name`` on NaN/Inf (default: the
    ``MEGATRON_FP4_CHECK_FINITE`` environment switch). Otherwise a group holding NaN/Inf
    dequantizes to NaN. Shapes a granularity cannot take raise ``ValueError`` naming the shape.
    """
    if check_finite if check_finite is not None else check_finite_enabled():
        _raise_if_not_finite(x, name)
    if not spec.is_quantized:
        return QuantizedTensor(x.to(HIGH_PRECISION_DTYPES[spec.dtype]), None, None, spec, x.shape, x.dtype)
    x2d = _as_rows(x, spec, name)
    xf = x2d.float()
    global_scale = None
    if spec.dtype in FP8_DTYPES:
        fp8 = FP8_DTYPES[spec.dtype]
        scale = absmax_scale(_group_amax(x2d, spec.granularity), torch.finfo(fp8).max, spec.power_of_two_scale)
        data = (xf * encode_multiplier(scale)).to(fp8)
        return QuantizedTensor(data, scale, None, spec, x.shape, x.dtype)
    if spec.granularity == "nvfp4":
        scale, global_scale = nvfp4_scales(x2d, spec.format)
        group_scale = scale.float() * global_scale
    elif spec.granularity == "nvfp4_2d":
        scale, global_scale = nvfp4_2d_scales(x2d, spec.format)
        group_scale = (scale.float() * global_scale).repeat_interleave(spec.block_size, dim=0)
    elif spec.granularity == "mxfp4":
        scale = mxfp4_scales(x2d)
        group_scale = e8m0_to_fp32(scale)
    else:
        scale = absmax_scale(_group_amax(x2d, spec.granularity), spec.format.max_value, spec.power_of_two_scale)
        group_scale = scale
    if spec.block_size is not None:
        group_scale = group_scale.repeat_interleave(spec.block_size, dim=-1)
    scaled = xf * encode_multiplier(group_scale)
    if spec.stochastic_rounding:
        from .stochastic import new_seed, philox_uniform

        seed = seed if seed is not None else new_seed(scaled.device, generator)
        codes = encode_stochastic(scaled, spec.format, draws=philox_uniform(seed, scaled.shape, scaled.device))
    else:
        codes = encode(scaled, spec.format)
    return QuantizedTensor(pack_codes(codes), scale, global_scale, spec, x.shape, x.dtype)


def fake_quantize(x: torch.Tensor, spec: QuantSpec, **kwargs) -> torch.Tensor:
    """Quantize then dequantize (same shape and dtype as ``x``): the simulated-FP4 view."""
    return quantize(x, spec, **kwargs).dequantize()

