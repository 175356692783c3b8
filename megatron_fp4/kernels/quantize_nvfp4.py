"""NVFP4 quantization for NVIDIA's training recipe in Triton: 16x16 weight tiles, the weight-gradient
operands along the tokens after the 16x16 random Hadamard transform, stochastic rounding.

One kernel, three layouts of the output operand O (E2M1 codes packed along O's rows, E4M3 block
scales, one fp32 tensor scale amax / (6 * 448)):
  ``tiles``        O = x [R, C], one scale per 16x16 tile (W and W^T quantize to the same values)
  rows             O = x [R, C], one scale per 1x16 block along C
  ``along_tokens`` O = (R16 x)^T [C, M] for x [M, C]: x transposed in registers, blocks of 16
                   tokens, optionally multiplied first by the 16x16 RHT matrix R16 (a ``tl.dot``
                   per 16-token group, fp32)
Two launches: partial maxima of |O| (the tensor scale needs the whole tensor; with the RHT the
maximum is of the transformed values), then the quantization. Stochastic rounding computes its
uniform number for element i of O (row-major) in registers from ``seed`` and i with Philox4x32-10
(``megatron_fp4.stochastic``, whose PyTorch form the reference uses), so kernel and reference
round identically, a seed makes training deterministic, and no draws tensor is written or read
(it was 4 B per element, twice per backward).

References: ``quantize(x, QuantSpec("fp4", "nvfp4_2d"))``, ``quantize(x, QuantSpec("fp4", "nvfp4",
stochastic_rounding=...))`` and ``quantize(apply_rht(x, seed).t(), ...)``. Bit-identical without
the RHT; with it the 16-term sums run in another order than PyTorch's matmul (values within fp32
rounding), so a code can differ where a value sits on a rounding boundary (tests bound it).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..quantize import QuantizedTensor, QuantSpec
from ..scaling import E4M3_MAX
from .fp8_rounding import fp8_byte
from .quantize_blocks import _e4m3_value
from .quantize_rows import _e2m1_grid_value, _e2m1_index, _max_keeping_nan
from .tensor_scale import tensor_scale_from_partials

__all__ = ["quantize_nvfp4", "supports_nvfp4_spec"]

BLOCK = 16
TILE_R, TILE_C = 64, 64


def supports_nvfp4_spec(spec: QuantSpec) -> bool:
    return spec.dtype == "fp4" and spec.fp4_format == "e2m1" and spec.granularity in ("nvfp4", "nvfp4_2d") and not spec.power_of_two_scale


@triton.jit
def _operand_tile(x_ptr, rht_ptr, M, N, stride_x, r0, c0, ALONG_TOKENS: tl.constexpr, RHT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """O[r0:r0+BR, c0:c0+BC] in fp32 (zeros outside), with its validity mask."""
    rows = r0 + tl.arange(0, BR)
    cols = c0 + tl.arange(0, BC)
    if ALONG_TOKENS:  # O = (R16 x)^T: O rows are x's columns, O columns are tokens
        tokens = cols
        mask_x = (tokens[:, None] < M) & (rows[None, :] < N)
        x = tl.load(x_ptr + tokens[:, None].to(tl.int64) * stride_x + rows[None, :], mask=mask_x, other=0.0).to(tl.float32)
        o = tl.trans(x)  # [BR, BC]
        if RHT:
            k = tl.arange(0, 16)
            r_t = tl.load(rht_ptr + k[None, :] * 16 + k[:, None])  # R^T: element [j, i] = R[i, j]
            groups = tl.reshape(o, (BR * BC // 16, 16))
            o = tl.reshape(tl.dot(groups, r_t, input_precision="ieee"), (BR, BC))
        mask = (rows[:, None] < N) & (cols[None, :] < M)
    else:
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        o = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    return o, mask


@triton.jit
def _partial_absmax_kernel(x_ptr, rht_ptr, partial_ptr, M, N, stride_x, ALONG_TOKENS: tl.constexpr, RHT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    o, _ = _operand_tile(x_ptr, rht_ptr, M, N, stride_x, tl.program_id(0) * BR, tl.program_id(1) * BC, ALONG_TOKENS, RHT, BR, BC)
    amax = tl.reduce(tl.reshape(tl.abs(o), (BR * BC,)), 0, _max_keeping_nan)
    tl.store(partial_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), amax)


@triton.jit
def _stochastic_index(magnitude, draw):
    """``formats.encode_stochastic``: between grid points lo < m < hi, round up with probability
    (m - lo) / (hi - lo); grid points and m >= 6 stay put / saturate."""
    upper = (magnitude > 0.0).to(tl.int32) + (magnitude > 0.5).to(tl.int32) + (magnitude > 1.0).to(tl.int32)
    upper += (magnitude > 1.5).to(tl.int32) + (magnitude > 2.0).to(tl.int32) + (magnitude > 3.0).to(tl.int32)
    upper += (magnitude > 4.0).to(tl.int32)
    upper = tl.minimum(upper, 7)
    lower = tl.maximum(upper - 1, 0)
    low = _e2m1_grid_value(lower)
    high = _e2m1_grid_value(upper)
    gap = high - low
    fraction = tl.where(gap > 0, (magnitude - low) / tl.where(gap > 0, gap, 1.0), 0.0)
    index = tl.where((draw < fraction) | (magnitude >= high), upper, lower)
    return tl.where(magnitude >= 6.0, 7, index)


@triton.jit
def _philox_uniform(index, k0, k1):
    """``stochastic.philox_uniform``'s number for counters ``index`` (int64) and key (k0, k1)
    (uint32): Philox4x32-10, the first word's top 24 bits as a float in [0, 1)."""
    c0 = (index & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((index >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = c0 * 0
    c3 = c0 * 0
    for _ in tl.static_range(10):
        hi0 = tl.math.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.math.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return (c0 >> 8).to(tl.float32) * 5.9604644775390625e-08  # 2^-24


@triton.jit
def _quantize_kernel(
    x_ptr, rht_ptr, seed_ptr, global_scale_ptr, codes_ptr, scale_ptr, M, N, stride_x,
    ALONG_TOKENS: tl.constexpr, RHT: tl.constexpr, TILES: tl.constexpr, STOCHASTIC: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
):
    r0 = tl.program_id(0) * BR
    c0 = tl.program_id(1) * BC
    o, mask = _operand_tile(x_ptr, rht_ptr, M, N, stride_x, r0, c0, ALONG_TOKENS, RHT, BR, BC)
    rows_o = N if ALONG_TOKENS else M
    cols_o = M if ALONG_TOKENS else N
    tensor_scale = tl.load(global_scale_ptr)
    if TILES:  # 16x16 tiles: amax over each tile, broadcast back
        tiles = tl.reshape(tl.abs(o), (BR // 16, 16, BC // 16, 16))
        amax = tl.reduce(tl.reduce(tiles, 3, _max_keeping_nan), 1, _max_keeping_nan)  # [BR/16, BC/16]
    else:
        amax = tl.reduce(tl.reshape(tl.abs(o), (BR, BC // 16, 16)), 2, _max_keeping_nan)  # [BR, BC/16]
    target = tl.math.div_rn(tl.math.div_rn(amax, 6.0), tensor_scale)
    byte = fp8_byte(tl.minimum(target, 448.0, propagate_nan=tl.PropagateNan.ALL), 3, 7, True)
    scale = _e4m3_value(byte) * tensor_scale
    multiplier = tl.where(scale == 0, 0.0, tl.math.div_rn(1.0, scale))  # ``quantize.encode_multiplier``
    if TILES:
        tile_rows = r0 // 16 + tl.arange(0, BR // 16)
        tile_cols = c0 // 16 + tl.arange(0, BC // 16)
        tile_mask = (tile_rows[:, None] < rows_o // 16) & (tile_cols[None, :] < cols_o // 16)
        tl.store(scale_ptr + tile_rows[:, None] * (cols_o // 16) + tile_cols[None, :], byte.to(tl.uint8), mask=tile_mask)
        full = tl.broadcast_to(tl.reshape(multiplier, (BR // 16, 1, BC // 16, 1)), (BR // 16, 16, BC // 16, 16))
        q = o * tl.reshape(full, (BR, BC))
    else:
        rows = r0 + tl.arange(0, BR)
        groups = c0 // 16 + tl.arange(0, BC // 16)
        group_mask = (rows[:, None] < rows_o) & (groups[None, :] < cols_o // 16)
        tl.store(scale_ptr + rows[:, None].to(tl.int64) * (cols_o // 16) + groups[None, :], byte.to(tl.uint8), mask=group_mask)
        q = tl.reshape(tl.reshape(o, (BR, BC // 16, 16)) * multiplier[:, :, None], (BR, BC))
    rows = r0 + tl.arange(0, BR)
    cols = c0 + tl.arange(0, BC)
    negative = (q.to(tl.int32, bitcast=True) >> 31) & 1
    magnitude = tl.abs(q)
    if STOCHASTIC:
        k0 = tl.load(seed_ptr).to(tl.uint32)
        k1 = tl.load(seed_ptr + 1).to(tl.uint32)
        draw = _philox_uniform(rows[:, None].to(tl.int64) * cols_o + cols[None, :], k0, k1)
        index = _stochastic_index(magnitude, draw)
    else:
        index = _e2m1_index(magnitude)
    codes = (index | (negative << 3)).to(tl.uint8)
    low, high = tl.split(tl.reshape(codes, (BR, BC // 2, 2)))
    half = c0 // 2 + tl.arange(0, BC // 2)
    tl.store(codes_ptr + rows[:, None].to(tl.int64) * (cols_o // 2) + half[None, :], low | (high << 4), mask=(rows[:, None] < rows_o) & (half[None, :] < cols_o // 2))


def quantize_nvfp4(
    x2d: torch.Tensor,
    *,
    tiles: bool = False,
    along_tokens: bool = False,
    rht: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
) -> QuantizedTensor:
    """NVFP4 codes of x2d [M, C] (``along_tokens``: of (R16 x2d)^T [C, M], ``rht`` the 16x16 R16 or
    None), 16x16 ``tiles`` or 1x16 blocks, stochastic rounding with the Philox ``seed``
    (``stochastic.new_seed``: int64 [2] on x2d's device; None: round to nearest). See the module
    docstring."""
    if tiles and along_tokens:
        raise ValueError("quantize_nvfp4: 16x16 tiles are for weights, not for the operands along the tokens")
    if rht is not None and not along_tokens:
        raise ValueError("quantize_nvfp4: the RHT runs along the tokens only (along_tokens=True)")
    m, n = x2d.shape
    out_rows, out_cols = (n, m) if along_tokens else (m, n)
    what = "the token dimension (--micro-batch-size x --seq-length)" if along_tokens else "the last dimension"
    if out_cols % BLOCK or (tiles and out_rows % BLOCK):
        raise ValueError(f"quantize_nvfp4: shape {tuple(x2d.shape)}: {what} must be a multiple of {BLOCK}" + (" (and the rows, for 16x16 tiles)" if tiles else ""))
    if seed is not None and (seed.dtype != torch.int64 or seed.numel() != 2 or seed.device != x2d.device):
        raise ValueError(f"quantize_nvfp4: seed must be two int64 words on {x2d.device} (stochastic.new_seed), got {seed.dtype} x {seed.numel()} on {seed.device}")
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    device = x2d.device
    rht_matrix = (rht.float().contiguous().to(device) if rht is not None else torch.empty(16, 16, device=device))
    grid = (triton.cdiv(out_rows, TILE_R), triton.cdiv(out_cols, TILE_C))
    partial = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=device)
    _partial_absmax_kernel[grid](x2d, rht_matrix, partial, m, n, x2d.stride(0), ALONG_TOKENS=along_tokens, RHT=rht is not None, BR=TILE_R, BC=TILE_C)
    global_scale = tensor_scale_from_partials(partial, 6.0 * E4M3_MAX)  # absmax_scale's rule, one launch
    codes = torch.empty(out_rows, out_cols // 2, dtype=torch.uint8, device=device)
    scale_shape = (out_rows // BLOCK, out_cols // BLOCK) if tiles else (out_rows, out_cols // BLOCK)
    scale_bytes = torch.empty(scale_shape, dtype=torch.uint8, device=device)
    _quantize_kernel[grid](
        x2d, rht_matrix, seed.contiguous() if seed is not None else partial, global_scale, codes, scale_bytes, m, n, x2d.stride(0),
        ALONG_TOKENS=along_tokens, RHT=rht is not None, TILES=tiles, STOCHASTIC=seed is not None, BR=TILE_R, BC=TILE_C,
        **({} if os.environ.get("TRITON_INTERPRET") == "1" else {"num_warps": 4}),
    )
    spec = QuantSpec("fp4", "nvfp4_2d" if tiles else "nvfp4", stochastic_rounding=seed is not None)
    dtype = torch.float32 if along_tokens else x2d.dtype  # the reference quantizes the fp32 transposed operand
    return QuantizedTensor(codes, scale_bytes.view(torch.float8_e4m3fn), global_scale, spec, torch.Size((out_rows, out_cols)), dtype)
