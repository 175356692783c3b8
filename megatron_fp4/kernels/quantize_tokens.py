"""The weight-gradient operands quantized along the tokens, from BF16 token pairs, in Triton.

``mxfp4`` and ``nvfp4`` quantize wgrad's operands dY^T and X^T: O = (R x)^T [C, M] for x [M, C],
blocks of 32 (MXFP4) or 16 (NVFP4) tokens along O's rows, R the optional 16x16 random Hadamard
transform of NVIDIA's recipe. ``quantize_nvfp4(along_tokens=True)`` transposes each tile in
registers; on the H200 that layout held it at 0.29-0.35 of copy bandwidth whatever the tile,
against 0.68 for the same work without the transpose (``docs/runs/session15/tokens_diag.py``): the
transposed tile spreads a block's tokens over the warps, so every block maximum is a cross-warp
reduction and the codes need another layout change before their store.

Here a program of one warp loads two token rows at once and packs each column's BF16 pair (tokens
2j, 2j+1) into one 32-bit word: transposing the [BT/2, BC] words is a relabelling of registers, and
a thread then holds consecutive tokens of its columns. A block's maximum is a reduction within
the thread (and one shuffle for MXFP4's 32), the pair's two codes are one output byte, and the RHT
is a fast Walsh-Hadamard transform in registers: the sign flips of R = H16 diag(s) / 4, four
butterfly stages (a + b, a - b) and the exact factor 1/4, instead of a tensor-core dot.

Measured on the H200 (graph timing, share of copy): MXFP4 0.40-0.51 against the transposing
kernel's 0.35; with the RHT slower than the tensor-core form (0.19 against 0.24), so the dispatch
takes this kernel for operands without the RHT only.

Same results as ``quantize_nvfp4``: bit-identical without the RHT (the same block maxima, scales,
roundings and Philox numbers of stochastic rounding), with it within the same bound (the 16-term
sums in the butterflies' order instead of the dot's). BF16 inputs only (the pair is one 32-bit
word); others take ``quantize_nvfp4``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from ..quantize import QuantizedTensor, QuantSpec
from ..scaling import E4M3_MAX
from .quantize_blocks import _mxfp4_scale, _nvfp4_scale, _partial_absmax, _power_of_two, hardware_block_scales
from .quantize_nvfp4 import _e2m1_stochastic_pairs, _philox_words, directed_sr
from .quantize_rows import _e2m1_round, _max_keeping_nan
from .tensor_scale import tensor_scale_from_partials

__all__ = ["quantize_along_tokens_bf16", "default_tile"]

# (tokens, columns, warps) per program by (rht, stochastic, mx): the sm90 builds under Triton 3.6
# (instructions per element; one warp of 256 columns holds each column's tokens in one thread, so
# the butterflies need no shuffle), then the H200 sweep (benchmarks/NOTES.md, session 15): MXFP4
# 0.51 of copy at 32x128 with 2 warps (the transposing kernel: 0.35). With the RHT this kernel
# measured slower than the transposing one (0.19-0.20 against 0.24-0.25; with stochastic rounding
# 0.14-0.15 against 0.16), so the dispatch (``kernels.quantize_along_tokens_fast``) sends only the
# operands without the RHT here; its RHT layouts stay for tests and measurement. Speed only.
TILE_BY_LAYOUT = {
    (False, False, True): (32, 128, 2),  # MXFP4 (mxfp4's wgrad operands): measured best of 7 tiles
    (False, True, True): (32, 128, 2),  # MXFP4, stochastic rounding
    (True, False, True): (32, 128, 1),  # MXFP4 after the RHT (256 columns spill)
    (True, True, True): (32, 128, 2),
    (False, False, False): (16, 256, 1),  # NVFP4
    (False, True, False): (16, 256, 1),
    (True, False, False): (16, 256, 1),  # NVFP4 after the RHT: the fastest tile of this kernel, 0.19
    (True, True, False): (16, 256, 1),  # ... with stochastic rounding: 0.14
}


def default_tile(rht: bool, stochastic: bool, mx: bool) -> tuple[int, int, int]:
    """(tokens, columns, warps) of one program for this layout (``TILE_BY_LAYOUT``)."""
    return TILE_BY_LAYOUT[(rht, stochastic, mx)]


@triton.jit
def _token_pairs(x_ptr, t0, c0, M, N, stride_x, BT: tl.constexpr, BC: tl.constexpr):
    """x[t0:t0+BT, c0:c0+BC] (BF16) as fp32 (even, odd) [BC, BT/2]: element (c, j) of ``even`` is
    x[t0 + 2j, c0 + c], of ``odd`` x[t0 + 2j + 1, c0 + c]; zeros outside x."""
    pairs = t0 + 2 * tl.arange(0, BT // 2)
    cols = c0 + tl.arange(0, BC)
    mask = (pairs[:, None] < M) & (cols[None, :] < N)  # M is even (a multiple of the block), so the odd row is inside too
    pointers = x_ptr + pairs[:, None].to(tl.int64) * stride_x + cols[None, :]
    even = tl.load(pointers, mask=mask, other=0.0).to(tl.uint16, bitcast=True).to(tl.uint32)
    odd = tl.load(pointers + stride_x, mask=mask, other=0.0).to(tl.uint16, bitcast=True).to(tl.uint32)
    words = tl.trans(even | (odd << 16))  # [BC, BT/2]
    return (words << 16).to(tl.float32, bitcast=True), (words & 0xFFFF0000).to(tl.float32, bitcast=True)


@triton.jit
def _butterfly(v, BC: tl.constexpr, W: tl.constexpr, STRIDE: tl.constexpr):
    """(a + b, a - b) for the words j, j + STRIDE of every 2 STRIDE words along v's [BC, W] rows."""
    split_view = tl.permute(tl.reshape(v, (BC, W // (2 * STRIDE), 2, STRIDE)), (0, 1, 3, 2))
    a, b = tl.split(split_view)
    return tl.reshape(tl.permute(tl.join(a + b, a - b), (0, 1, 3, 2)), (BC, W))


@triton.jit
def _hadamard16(even, odd, signs_ptr, BC: tl.constexpr, BT: tl.constexpr):
    """R = H16 diag(s) / 4 along the tokens, for each 16 tokens (8 pair words) of the [BC, BT/2]
    pairs: signs s (fp32 +-1, [16]), the Walsh-Hadamard butterflies over the token index's four
    bits (bit 0 is the pair, bits 1-3 the words), then the exact factor 1/4."""
    position = 2 * tl.arange(0, BT // 2) % 16
    even = even * tl.load(signs_ptr + position)[None, :]
    odd = odd * tl.load(signs_ptr + position + 1)[None, :]
    even, odd = even + odd, even - odd
    for stride in tl.static_range(3):
        even = _butterfly(even, BC, BT // 2, 1 << stride)
        odd = _butterfly(odd, BC, BT // 2, 1 << stride)
    return even * 0.25, odd * 0.25


@triton.jit
def _pairs_of_operand(x_ptr, signs_ptr, t0, c0, M, N, stride_x, RHT: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr):
    even, odd = _token_pairs(x_ptr, t0, c0, M, N, stride_x, BT, BC)
    if RHT:
        even, odd = _hadamard16(even, odd, signs_ptr, BC, BT)
    return even, odd


@triton.jit
def _partial_absmax_kernel(x_ptr, signs_ptr, partial_ptr, M, N, stride_x, BT: tl.constexpr, BC: tl.constexpr):
    """max |(R x)^T| over one program's tile (NaN if it holds a NaN): the NVFP4 tensor scale after
    the RHT, from the same butterflies as the quantization."""
    even, odd = _pairs_of_operand(x_ptr, signs_ptr, tl.program_id(1) * BT, tl.program_id(0) * BC, M, N, stride_x, True, BT, BC)
    both = tl.maximum(tl.abs(even), tl.abs(odd), propagate_nan=tl.PropagateNan.ALL)
    tl.store(partial_ptr + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0), tl.reduce(tl.reshape(both, (BC * BT // 2,)), 0, _max_keeping_nan))


@triton.jit
def _quantize_kernel(
    x_ptr, signs_ptr, seed_ptr, global_scale_ptr, codes_ptr, scale_ptr, values_ptr, M, N, stride_x,
    RHT: tl.constexpr, STOCHASTIC: tl.constexpr, MX: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr, VALUES: tl.constexpr,
    CODES: tl.constexpr = True, HARDWARE_CAST: tl.constexpr = False, DIRECTED: tl.constexpr = False,
):
    """O = (R x)^T [N, M]: O's rows are x's columns c0.., its columns the tokens t0.. of this program.
    CODES: write the packed codes (off for an operand written only as its BF16 values, with
    VALUES); HARDWARE_CAST: NVFP4's block scales by the FP8 conversion instructions; DIRECTED:
    stochastic rounding by ``quantize_nvfp4._e2m1_stochastic_directed`` (compiled only; the same codes)."""
    c0 = tl.program_id(0) * BC
    t0 = tl.program_id(1) * BT
    even, odd = _pairs_of_operand(x_ptr, signs_ptr, t0, c0, M, N, stride_x, RHT, BT, BC)
    G: tl.constexpr = 32 if MX else 16  # tokens per block
    both = tl.maximum(tl.abs(even), tl.abs(odd), propagate_nan=tl.PropagateNan.ALL)
    amax = tl.reduce(tl.reshape(both, (BC, BT // G, G // 2)), 2, _max_keeping_nan)  # [BC, BT/G]
    if MX:  # E8M0; a block holding NaN/Inf: 0xFF; 1 / 2^e is the power of two 2^-e (the division's bits)
        byte, scale = _mxfp4_scale(tl.where(amax == float("inf"), float("nan"), amax))
        block_value = scale  # MXFP4's scale is its 2^e (NaN for 0xFF)
        multiplier = tl.where(byte == 0xFF, float("nan"), _power_of_two(127 - byte))
    else:
        byte, block_value, scale = _nvfp4_scale(amax, tl.load(global_scale_ptr), HARDWARE_CAST)
        multiplier = tl.where(scale == 0, 0.0, tl.math.div_rn(1.0, scale))  # ``quantize.encode_multiplier``
    per_word = tl.reshape(tl.broadcast_to(multiplier[:, :, None], (BC, BT // G, G // 2)), (BC, BT // 2))
    q_even, q_odd = even * per_word, odd * per_word
    rows = c0 + tl.arange(0, BC)
    if STOCHASTIC:  # element (r, t) of O takes a draw of Philox counter (r M + t) / 8: tokens 2j, 2j+1 take the
        k0 = tl.load(seed_ptr).to(tl.uint32)  # low and high halves of one word (``_philox_words``)
        k1 = tl.load(seed_ptr + 1).to(tl.uint32)
        counters = rows[:, None].to(tl.int64) * (M // 8) + (t0 // 8 + tl.arange(0, BT // 8))[None, :]
        words = _philox_words(counters, k0, k1, BC, BT)
        value_even, code_even, value_odd, code_odd = _e2m1_stochastic_pairs(q_even, q_odd, words, DIRECTED)
    else:
        value_even, code_even = _e2m1_round(q_even)
        value_odd, code_odd = _e2m1_round(q_odd)
    half = t0 // 2 + tl.arange(0, BT // 2)
    if CODES:
        packed = (code_even | (code_odd << 4)).to(tl.uint8)
        tl.store(codes_ptr + rows[:, None].to(tl.int64) * (M // 2) + half[None, :], packed, mask=(rows[:, None] < N) & (half[None, :] < M // 2))
    groups = t0 // G + tl.arange(0, BT // G)
    tl.store(scale_ptr + rows[:, None].to(tl.int64) * (M // G) + groups[None, :], byte.to(tl.uint8), mask=(rows[:, None] < N) & (groups[None, :] < M // G))
    if VALUES:  # the block GEMM's BF16 operand (E2M1 value x block scale, exact): a token pair is one 32-bit word
        per_pair = tl.reshape(tl.broadcast_to(block_value[:, :, None], (BC, BT // G, G // 2)), (BC, BT // 2))
        v_even = (value_even * per_pair).to(tl.bfloat16).to(tl.uint16, bitcast=True).to(tl.uint32)
        v_odd = (value_odd * per_pair).to(tl.bfloat16).to(tl.uint16, bitcast=True).to(tl.uint32)
        tl.store(values_ptr + rows[:, None].to(tl.int64) * (M // 2) + half[None, :], v_even | (v_odd << 16), mask=(rows[:, None] < N) & (half[None, :] < M // 2))


def quantize_along_tokens_bf16(
    x2d: torch.Tensor, *, rht_signs: torch.Tensor | None = None, seed: torch.Tensor | None = None, block_format: str = "nvfp4",
    tile: tuple[int, int, int] | None = None, values: bool = False, codes: bool = True,
) -> QuantizedTensor:
    """``quantize_nvfp4(x2d, along_tokens=True, ...)`` for BF16 x2d [M, C] (see the module
    docstring): NVFP4 (1x16 E4M3 blocks, fp32 tensor scale) or MXFP4 (1x32 E8M0) of (R x2d)^T [C, M].
    rht_signs: the +-1 signs s of R = H16 diag(s) / 4 (``hadamard.rht_signs``), None for no RHT;
    seed: stochastic rounding's Philox key (``stochastic.new_seed``), None to round to nearest.
    tile: (tokens, columns, warps) per program, powers of two, tokens at least the block (default:
    ``default_tile``; speed only). values: also write the operand's BF16 values (``QuantizedTensor.bf16``);
    codes=False (with values): those only, no packed codes (``QuantizedTensor.data`` None)."""
    if block_format not in ("nvfp4", "mxfp4"):
        raise ValueError(f"quantize_along_tokens_bf16: block_format must be 'nvfp4' or 'mxfp4', got {block_format!r}")
    if x2d.dtype != torch.bfloat16 or x2d.dim() != 2:
        raise ValueError(f"quantize_along_tokens_bf16: needs a 2-D BF16 tensor, got {x2d.dtype} of shape {tuple(x2d.shape)}")
    if not (codes or values):
        raise ValueError("quantize_along_tokens_bf16: codes=False writes the BF16 values only, so it needs values=True")
    mx = block_format == "mxfp4"
    block = 32 if mx else 16
    m, n = x2d.shape
    if m % block:  # also the RHT's 16
        raise ValueError(
            f"quantize_along_tokens_bf16: shape {tuple(x2d.shape)}: the token dimension (--micro-batch-size x --seq-length) "
            f"must be a multiple of {block}"
        )
    if seed is not None and (seed.dtype != torch.int64 or seed.numel() != 2 or seed.device != x2d.device):
        raise ValueError(f"quantize_along_tokens_bf16: seed must be two int64 words on {x2d.device} (stochastic.new_seed), got {seed.dtype} x {seed.numel()} on {seed.device}")
    if rht_signs is not None and (rht_signs.numel() != 16 or rht_signs.dtype != torch.float32 or rht_signs.device != x2d.device):
        raise ValueError(f"quantize_along_tokens_bf16: rht_signs must be 16 fp32 signs on {x2d.device} (hadamard.rht_signs), got {rht_signs.dtype} x {rht_signs.numel()}")
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    device = x2d.device
    bt, bc, warps = tile or default_tile(rht_signs is not None, seed is not None, mx)
    if bt < block or bt & (bt - 1) or bc < 16 or bc & (bc - 1):
        raise ValueError(f"quantize_along_tokens_bf16: tile tokens must be a power of two >= {block}, columns a power of two >= 16, got {tile}")
    grid = (triton.cdiv(n, bc), triton.cdiv(m, bt))
    launch = {} if os.environ.get("TRITON_INTERPRET") == "1" else {"num_warps": warps}
    signs = rht_signs.contiguous() if rht_signs is not None else torch.empty(16, device=device)
    global_scale = None
    if not mx:  # the tensor scale: max |x| (the transpose's), or after the RHT max |R x| from the same butterflies
        if rht_signs is None:
            partial = _partial_absmax(x2d)
        else:
            partial = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=device)
            _partial_absmax_kernel[grid](x2d, signs, partial, m, n, x2d.stride(0), BT=bt, BC=bc, **launch)
        global_scale = tensor_scale_from_partials(partial, 6.0 * E4M3_MAX)
    packed = torch.empty(n, m // 2, dtype=torch.uint8, device=device) if codes else None
    scale_bytes = torch.empty(n, m // block, dtype=torch.uint8, device=device)
    bf16 = torch.empty(n, m, dtype=torch.bfloat16, device=device) if values else None
    _quantize_kernel[grid](
        x2d, signs, seed.contiguous() if seed is not None else signs, global_scale if global_scale is not None else signs,
        packed if codes else scale_bytes, scale_bytes, bf16.view(torch.int32) if values else packed, m, n, x2d.stride(0),
        RHT=rht_signs is not None, STOCHASTIC=seed is not None, MX=mx, BT=bt, BC=bc, VALUES=values,
        CODES=codes, HARDWARE_CAST=hardware_block_scales(), DIRECTED=directed_sr(), **launch,
    )
    spec = QuantSpec("fp4", block_format, stochastic_rounding=seed is not None)
    scale = scale_bytes if mx else scale_bytes.view(torch.float8_e4m3fn)
    return QuantizedTensor(packed, scale, global_scale, spec, torch.Size((n, m)), torch.float32, bf16=bf16)
