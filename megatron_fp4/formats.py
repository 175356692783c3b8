"""FP4 element formats: which values exist, how a real number rounds onto them, how codes pack.

Paper §2 / Appendix A: E2M1 is the default (the only one with hardware support); E1M2 and E3M0
are the ablation grids. A format here is just its sorted non-negative magnitudes; the 4-bit code
of a value is ``sign << 3 | index`` where ``index`` is the magnitude's position in that list.
For E2M1 that coincides with the IEEE-style bit pattern used by hardware (0b0111 = 6.0).

Rounding rule: round to nearest; a value exactly halfway between two neighbours goes to the one
with the even index ("ties to even code"). For E2M1 this is IEEE round-half-to-even, the rule of
the hardware convert instructions. Values beyond the largest magnitude saturate to it. NaN stays
NaN (E2M1 has no NaN code: it never gets encoded, see ``encode``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
    "FP4Format",
    "E2M1",
    "E1M2",
    "E3M0",
    "FORMATS",
    "get_format",
    "round_to_grid",
    "encode_stochastic",
    "encode",
    "decode",
    "pack_codes",
    "unpack_codes",
]


@dataclass(frozen=True)
class FP4Format:
    """A 4-bit floating-point element grid: 1 sign bit and 8 non-negative magnitudes."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    magnitudes: tuple[float, ...]
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.exponent_bits + self.mantissa_bits != 3:
            raise ValueError(f"FP4Format {self.name!r}: exponent_bits + mantissa_bits must be 3")
        if len(self.magnitudes) != 8 or self.magnitudes[0] != 0.0:
            raise ValueError(f"FP4Format {self.name!r}: needs 8 magnitudes starting at 0.0")
        if any(b <= a for a, b in zip(self.magnitudes, self.magnitudes[1:])):
            raise ValueError(f"FP4Format {self.name!r}: magnitudes must be strictly increasing")

    @property
    def max_value(self) -> float:
        """Largest representable magnitude (6.0 for E2M1): the absmax scale target."""
        return self.magnitudes[-1]

    def grid(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The 8 magnitudes as an fp32 tensor on ``device`` (cached)."""
        return self._tables(device)[0]

    def midpoints(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """The 7 rounding boundaries between neighbouring magnitudes (cached)."""
        return self._tables(device)[1]

    def _tables(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(torch.device(device))
        if key not in self._cache:
            grid = torch.tensor(self.magnitudes, dtype=torch.float32, device=device)
            self._cache[key] = (grid, (grid[1:] + grid[:-1]) / 2)
        return self._cache[key]


def _minifloat_magnitudes(exponent_bits: int, mantissa_bits: int, bias: int) -> tuple[float, ...]:
    """Magnitudes of a sign-magnitude minifloat with subnormals and no inf/NaN encodings."""
    values = []
    for exponent in range(2**exponent_bits):
        for mantissa in range(2**mantissa_bits):
            fraction = mantissa / 2**mantissa_bits
            if exponent == 0:
                values.append(fraction * 2.0 ** (1 - bias))
            else:
                values.append((1 + fraction) * 2.0 ** (exponent - bias))
    return tuple(values)


E2M1 = FP4Format("e2m1", 2, 1, _minifloat_magnitudes(2, 1, bias=1))  # 0 .5 1 1.5 2 3 4 6
E1M2 = FP4Format("e1m2", 1, 2, _minifloat_magnitudes(1, 2, bias=1))  # 0 .25 ... 1.75 (uniform)
E3M0 = FP4Format("e3m0", 3, 0, _minifloat_magnitudes(3, 0, bias=3))  # 0 .25 .5 1 2 4 8 16

FORMATS = {fmt.name: fmt for fmt in (E2M1, E1M2, E3M0)}


def get_format(name: str) -> FP4Format:
    """Look a format up by name (``e2m1``, ``e1m2``, ``e3m0``)."""
    try:
        return FORMATS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown FP4 format {name!r}; allowed: {sorted(FORMATS)}") from None


def _nearest_index(magnitude: torch.Tensor, fmt: FP4Format) -> torch.Tensor:
    """Index of the nearest grid magnitude, ties to the even index, saturating at the top."""
    mids = fmt.midpoints(magnitude.device)
    index = torch.bucketize(magnitude, mids)  # a value equal to mids[j] lands on j (rounds down)
    at_tie = (index < len(mids)) & (magnitude == mids[index.clamp_max(len(mids) - 1)])
    return torch.where(at_tie & (index % 2 == 1), index + 1, index)


def round_to_grid(x: torch.Tensor, fmt: FP4Format = E2M1) -> torch.Tensor:
    """Round already-scaled values onto ``fmt``'s grid (fp32 result); NaN stays NaN."""
    x = x.float()
    index = _nearest_index(x.abs(), fmt)
    rounded = fmt.grid(x.device)[index.clamp_max(7)].copysign(x)
    return torch.where(torch.isnan(x), x, rounded)


def encode(x: torch.Tensor, fmt: FP4Format = E2M1) -> torch.Tensor:
    """4-bit codes (uint8 in 0..15) of already-scaled values: ``sign << 3 | nearest index``.

    NaN has no code; callers check finiteness first (quantize does). NaN encodes as the
    largest magnitude with its sign bit, so never pass NaN here when it matters.
    """
    x = x.float()
    index = _nearest_index(x.abs(), fmt).clamp_max(7).to(torch.uint8)
    sign = torch.signbit(x).to(torch.uint8) << 3
    return sign | index


def encode_stochastic(
    x: torch.Tensor, fmt: FP4Format = E2M1, generator: torch.Generator | None = None, draws: torch.Tensor | None = None
) -> torch.Tensor:
    """4-bit codes with stochastic rounding: a magnitude between grid points lo < |x| < hi rounds
    up when its uniform draw is below (|x| - lo) / (hi - lo), so E[decode(code)] = x inside the
    grid (unbiased); beyond the largest magnitude it saturates. Grid values stay exact. ``draws``:
    the uniform numbers in [0, 1) of x's shape; default: Philox numbers (``megatron_fp4.stochastic``)
    for a seed drawn from ``generator`` (or torch's global stream), so a seed makes it deterministic."""
    x = x.float()
    magnitude = x.abs()
    grid = fmt.grid(x.device)
    upper = torch.bucketize(magnitude, grid).clamp_max(len(grid) - 1)  # first grid point >= |x|
    lower = (upper - 1).clamp_min(0)
    low, high = grid[lower], grid[upper]
    gap = high - low
    fraction = torch.where(gap > 0, (magnitude - low) / torch.where(gap > 0, gap, torch.ones_like(gap)), torch.zeros_like(gap))
    if draws is None:
        from .stochastic import new_seed, philox_uniform

        draws = philox_uniform(new_seed(x.device, generator), x.shape, x.device)
    elif draws.shape != x.shape:
        raise ValueError(f"encode_stochastic: draws of shape {tuple(draws.shape)} for values of shape {tuple(x.shape)}")
    index = torch.where((draws < fraction) | (magnitude >= high), upper, lower)
    index = torch.where(magnitude >= grid[-1], torch.full_like(index, len(grid) - 1), index)
    sign = torch.signbit(x).to(torch.uint8) << 3
    return sign | index.to(torch.uint8)


def decode(codes: torch.Tensor, fmt: FP4Format = E2M1) -> torch.Tensor:
    """fp32 values of 4-bit codes (inverse of ``encode`` on grid values, -0.0 included)."""
    codes = codes.to(torch.int64)
    magnitude = fmt.grid(codes.device)[codes & 7]
    return torch.where((codes & 8) != 0, -magnitude, magnitude)


def pack_codes(codes: torch.Tensor) -> torch.Tensor:
    """Pack pairs of 4-bit codes along the last dim into bytes: element 2i low nibble, 2i+1 high.

    This is the layout of ``torch.float4_e2m1fn_x2`` and of the hardware FP4 operands.
    """
    if codes.shape[-1] % 2:
        raise ValueError(f"pack_codes: last dim must be even, got shape {tuple(codes.shape)}")
    codes = codes.to(torch.uint8)
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack_codes(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of ``pack_codes``: bytes back to one 4-bit code per uint8, last dim doubled."""
    if packed.dtype != torch.uint8:
        raise ValueError(f"unpack_codes: expected uint8 bytes, got {packed.dtype}")
    low, high = packed & 0x0F, packed >> 4
    return torch.stack((low, high), dim=-1).flatten(-2)
