"""NVFP4 quantization for NVIDIA's training recipe in Triton: 16x16 weight tiles, the weight-gradient
operands along the tokens after the 16x16 random Hadamard transform, stochastic rounding.

One kernel, three layouts of the output operand O (E2M1 codes packed along O's rows, E4M3 block
scales, one fp32 tensor scale amax / (6 * 448)):
  ``tiles``        O = x [R, C], one scale per 16x16 tile (W and W^T quantize to the same values)
  rows             O = x [R, C], one scale per 1x16 block along C
  ``along_tokens`` O = (R16 x)^T [C, M] for x [M, C]: x transposed in registers, blocks of 16
                   tokens, optionally multiplied first by the 16x16 RHT matrix R16 (a ``tl.dot``
                   per 16-token group: BF16 tensor cores for BF16 x, else fp32)
Two launches: partial maxima of |O| (the tensor scale needs the whole tensor; with the RHT the
maximum is of the transformed values), then the quantization. ``block_format="mxfp4"`` writes
OCP MXFP4 instead (1x32 blocks with E8M0 scales, no tensor scale, so one launch) in the rows and
along-the-tokens layouts: MXFP4's weight-gradient operands without a transposed copy. Stochastic rounding computes its
uniform number for element i of O (row-major) in registers from ``seed`` and i with Philox4x32-10
(a 16-bit half of a word of counter i div 8: ``megatron_fp4.stochastic``, whose PyTorch form the
reference uses), so kernel and reference
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
from .quantize_blocks import _mxfp4_scale, _nvfp4_scale, _power_of_two, hardware_block_scales
from .quantize_rows import _e2m1_round, _max_keeping_nan
from .tensor_scale import tensor_scale_from_partials

__all__ = ["quantize_nvfp4", "supports_nvfp4_spec", "tensor_scales_with_rht"]

BLOCK = 16
TILE_R, TILE_C = 64, 64  # a program's tile of O (rows, columns) where no layout below says otherwise
# (rows of O, columns of O, warps) per program, by (along_tokens, rht, stochastic, tiles, mx):
# chosen by the sm90 build's instructions per element under the device's Triton 3.6 (session 15:
# MXFP4 along the tokens 33.5 -> 22.6, NVFP4 16x16 tiles 34.8 -> 22.6; the stochastic layouts gain
# < 10% and need ~210 registers) and the H200 sweep (``bench_quant.py --sweep --sweep-families
# recipe``, NOTES.md session 15: the RHT layout is fastest at 64x64, the others within 0.02 of the
# best at these). Speed only.
TILE_BY_LAYOUT = {
    (True, False, False, False, True): (256, 32, 4),  # MXFP4 along the tokens (wgrad's X^T, dY^T)
    (False, False, False, True, False): (32, 256, 4),  # NVFP4 16x16 weight tiles
}


def default_tile(along_tokens: bool, rht: bool, stochastic: bool, tiles: bool, mx: bool) -> tuple[int, int, int]:
    """(rows, columns, warps) of one program's tile of O for this layout (``TILE_BY_LAYOUT``)."""
    return TILE_BY_LAYOUT.get((along_tokens, rht, stochastic, tiles, mx), (TILE_R, TILE_C, 4))


DIRECTED_SR = True  # compiled stochastic rounding by ``_e2m1_stochastic_directed`` (same codes; NOTES.md, session 17)


def directed_sr() -> bool:
    """Whether the kernels round stochastically by ``_e2m1_stochastic_directed`` (compiled and
    ``DIRECTED_SR``, read at each launch) or by the integer form (the same codes)."""
    return DIRECTED_SR and os.environ.get("TRITON_INTERPRET") != "1"
TENSOR_CORE_RHT = True  # BF16 inputs: the RHT as a BF16 tensor-core dot (exact products, fp32 sums; NOTES.md, session 9)


def supports_nvfp4_spec(spec: QuantSpec) -> bool:
    """NVFP4 (1x16, 16x16) and MXFP4 (1x32) E2M1 specs: the formats this kernel writes."""
    nvfp4 = spec.granularity in ("nvfp4", "nvfp4_2d") and not spec.power_of_two_scale
    return spec.dtype == "fp4" and spec.fp4_format == "e2m1" and (nvfp4 or spec.granularity == "mxfp4")


@triton.jit
def _tokens_tile(x_ptr, M, N, stride_x, r0, c0, BR: tl.constexpr, BC: tl.constexpr, EVEN: tl.constexpr):
    """x[c0:c0+BC, r0:r0+BR] (tokens, columns; zeros outside x) in x's dtype: the input of O's tile
    along the tokens. EVEN: the tile lies inside x (no masks)."""
    rows = r0 + tl.arange(0, BR)
    tokens = c0 + tl.arange(0, BC)
    mask_x = None if EVEN else (tokens[:, None] < M) & (rows[None, :] < N)
    return tl.load(x_ptr + tokens[:, None].to(tl.int64) * stride_x + rows[None, :], mask=mask_x, other=None if EVEN else 0.0)


@triton.jit
def _transformed_tile(x, rht_ptr, RHT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """O's tile (R16 x)^T [BR, BC] in fp32 from x's tile [BC tokens, BR columns] (``_tokens_tile``)."""
    if RHT == 2:  # BF16 x on tensor cores: R16's entries are +-1/4 (exact in BF16), products exact, fp32 sums
        k = tl.arange(0, 16)
        r_t = tl.load(rht_ptr + k[None, :] * 16 + k[:, None]).to(tl.bfloat16)  # R^T: element [j, i] = R[i, j]
        groups = tl.reshape(tl.trans(x), (BR * BC // 16, 16))
        o = tl.reshape(tl.dot(groups, r_t, out_dtype=tl.float32), (BR, BC))
    else:
        o = tl.trans(x).to(tl.float32)  # [BR, BC]: transposed in x's dtype (half the shared memory of fp32)
        if RHT == 1:  # fp32 on the CUDA cores
            k = tl.arange(0, 16)
            r_t = tl.load(rht_ptr + k[None, :] * 16 + k[:, None])  # R^T: element [j, i] = R[i, j]
            groups = tl.reshape(o, (BR * BC // 16, 16))
            o = tl.reshape(tl.dot(groups, r_t, input_precision="ieee"), (BR, BC))
    return o


@triton.jit
def _operand_tile(
    x_ptr, rht_ptr, M, N, stride_x, r0, c0, ALONG_TOKENS: tl.constexpr, RHT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, EVEN: tl.constexpr = False,
):
    """O[r0:r0+BR, c0:c0+BC] in fp32 (zeros outside). RHT: 0 none, 1 the 16x16 transform in fp32 on
    the CUDA cores, 2 on BF16 tensor cores (BF16 x only). EVEN: the tile lies inside x (no masks)."""
    if ALONG_TOKENS:  # O = (R16 x)^T: O rows are x's columns, O columns are tokens
        o = _transformed_tile(_tokens_tile(x_ptr, M, N, stride_x, r0, c0, BR, BC, EVEN), rht_ptr, RHT, BR, BC)
    else:
        rows = r0 + tl.arange(0, BR)
        cols = c0 + tl.arange(0, BC)
        mask = None if EVEN else (rows[:, None] < M) & (cols[None, :] < N)
        o = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :], mask=mask, other=None if EVEN else 0.0).to(tl.float32)
    return o


@triton.jit
def _partial_absmax_kernel(x_ptr, rht_ptr, partial_ptr, M, N, stride_x, ALONG_TOKENS: tl.constexpr, RHT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    o = _operand_tile(x_ptr, rht_ptr, M, N, stride_x, tl.program_id(0) * BR, tl.program_id(1) * BC, ALONG_TOKENS, RHT, BR, BC)
    amax = tl.reduce(tl.reshape(tl.abs(o), (BR * BC,)), 0, _max_keeping_nan)
    tl.store(partial_ptr + tl.program_id(0) * tl.num_programs(1) + tl.program_id(1), amax)


@triton.jit
def _partial_absmax_pair_kernel(x_ptr, rht_ptr, partial_ptr, plain_ptr, M, N, stride_x, RHT: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr):
    """``_partial_absmax_kernel`` along the tokens with the RHT, and from the same read the tile's
    max |x| before the transform (the tensor scale of x's own 1x16 operand)."""
    x = _tokens_tile(x_ptr, M, N, stride_x, tl.program_id(0) * BR, tl.program_id(1) * BC, BR, BC, False)
    program = tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)
    tl.store(plain_ptr + program, tl.reduce(tl.reshape(tl.abs(x.to(tl.float32)), (BR * BC,)), 0, _max_keeping_nan))
    o = _transformed_tile(x, rht_ptr, RHT, BR, BC)
    tl.store(partial_ptr + program, tl.reduce(tl.reshape(tl.abs(o), (BR * BC,)), 0, _max_keeping_nan))


@triton.jit
def _e2m1_stochastic(q, word, HIGH: tl.constexpr):
    """(value, code) of fp32 ``q`` with ``formats.encode_stochastic``'s stochastic rounding for the
    uniform number draw 2^-16, ``draw`` the low (HIGH False) or high 16 bits of the Philox word
    ``word`` (``stochastic``), in integer operations: the value as fp32 with q's sign (what
    decoding the code gives) and the 4-bit code sign << 3 | index, as ``quantize_rows._e2m1_round``.

    On E2M1 the reference's fraction (|q| - lo) / (hi - lo) is exact (gaps are powers of two), so
    "draw < fraction" has an exact integer form. |q| >= 1 (one kept mantissa bit; |q| capped at 6,
    which also saturates Inf/NaN): fraction = d / 2^22 for the 22 dropped bits d, and the draw is
    below it iff r = draw 2^6 < d, i.e. iff d + (2^22 - 1 - r) carries into the kept bit; that sum
    with the dropped bits cleared is the rounded value itself. |q| < 1 (grid 0, 0.5, 1):
    c = ceil(|q| 2^25) holds floor(2|q|) above bit 24 and ceil(fraction 2^24) below; the draw is
    below the fraction iff k = draw 2^8 < c mod 2^24, the same carry test with 24 bits. r and k are
    one shift and one logic operation of the word for both (2^24 - 1 - k = 4 (2^22 - 1 - r) + 3)."""
    bits = q.to(tl.int32, bitcast=True)
    absolute = bits & 0x7FFFFFFF
    sign = bits & -2147483648
    magnitude = tl.minimum(absolute, 0x40C00000)
    word = word.to(tl.int32, bitcast=True)
    # complements 2^22 - 1 - r and 2^24 - 1 - k: the second is 4 times the first plus 3 (one integer
    # multiply-add, off the logic pipe that limits these kernels: benchmarks/NOTES.md, session 16)
    if HIGH:  # bits 16..31 to 6..21 (the mask drops the arithmetic shift's sign copies)
        r_complement = ((word >> 10) & 0x3FFFC0) ^ 0x3FFFFF
    else:
        r_complement = ((word << 6) & 0x3FFFC0) ^ 0x3FFFFF
    normal_sum = magnitude + r_complement
    c = tl.math.ceil(absolute.to(tl.float32, bitcast=True) * 33554432.0).to(tl.int32)
    small = (c + (r_complement * 4 + 3)) >> 24  # 0, 1 or 2 halves
    below_one = absolute < 0x3F800000
    index = tl.where(below_one, small, (normal_sum >> 22) + 4) & 7  # normal: index + 256 (-252 mod 8 = 4)
    value_bits = tl.where(below_one, (small.to(tl.float32) * 0.5).to(tl.int32, bitcast=True), normal_sum & -4194304)  # 0xFFC00000
    return (value_bits | sign).to(tl.float32, bitcast=True), index | ((bits >> 28) & 8)


@triton.jit
def _fma_up(a, b, c):
    """a b + c rounded toward +inf, subnormals kept (PTX ``fma.rp.f32``; libdevice's form flushes
    them to zero, which would round a subnormal |q| with draw 0 down instead of up)."""
    return tl.inline_asm_elementwise("fma.rp.f32 $0, $1, $2, $3;", "=f,f,f,f", [a, b, c], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _add_up(a, b):
    """a + b rounded toward +inf (PTX ``add.rp.f32``, subnormals kept)."""
    return tl.inline_asm_elementwise("add.rp.f32 $0, $1, $2;", "=f,f,f", [a, b], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _e2m1_stochastic_directed(q, word, HIGH: tl.constexpr):
    """``_e2m1_stochastic`` (the same value and code for every q and draw) in fp32 arithmetic
    rounding upward, compiled only (PTX inline assembly; the interpreter runs the integer form):
    far fewer integer and logic instructions, the pipe that bounds these kernels
    (benchmarks/NOTES.md, session 17).

    With m = min(|q|, 6) (NaN and Inf: 6) between grid neighbours lo <= m < hi of spacing s
    (0.5 below 2, 1 in [2, 4), 2 in [4, 6]: s = B / 2 for the binade B = 2^floor(log2 max(m, 1))),
    the reference rounds up iff u < (m - lo) / s for the draw u = draw 2^-16, i.e. iff m - u s > lo:
    the value is m - u s rounded up to a multiple of s. One fma rounding toward +inf forms
    m - s - u s (it keeps that ceiling: the multiples of s are fp32 numbers), and adding the magic
    number A = (3 2^22 + 1) s, again rounding up, rounds to A's ulp s: the sum is M + the value for
    M = 3 2^22 s. (1 + u) s / B = (1 + u) / 2 is the fp32 number in [0.5, 1) whose top mantissa
    bits are the draw's 16. The sum's low bits count spacings as in ``quantize_rows._e2m1_round``:
    the index is that count plus 0, 2 or 4 by binade, read from M's exponent."""
    bits = q.to(tl.int32, bitcast=True)
    magnitude = tl.minimum(tl.abs(q), 6.0)  # the non-NaN operand: NaN -> 6
    binade = tl.maximum(magnitude.to(tl.int32, bitcast=True) & 0x7F800000, 0x3F800000).to(tl.float32, bitcast=True)
    word = word.to(tl.int32, bitcast=True)
    if HIGH:  # bits 16..31 to mantissa bits 7..22 (the mask drops the arithmetic shift's sign copies)
        half_one_plus_draw = (((word >> 9) & 0x7FFF80) | 0x3F000000).to(tl.float32, bitcast=True)
    else:
        half_one_plus_draw = (((word << 7) & 0x7FFF80) | 0x3F000000).to(tl.float32, bitcast=True)
    magic = binade * 6291456.0  # M = 3 2^22 s = 3 2^21 B (exact, as A)
    total = _add_up(_fma_up(-half_one_plus_draw, binade, magnitude), binade * 6291456.5)
    value = ((total - magic).to(tl.int32, bitcast=True) | (bits & -2147483648)).to(tl.float32, bitcast=True)
    # index: the count (total - M bits) plus 0 / 2 / 4 (M bits >> 22 are 299, 301, 303; + 5 is 0, 2, 4 mod 8)
    index = (total.to(tl.int32, bitcast=True) + (magic.to(tl.int32, bitcast=True) >> 22) + 5) & 7
    return value, index | ((bits >> 28) & 8)


@triton.jit
def _e2m1_stochastic_pairs(q_even, q_odd, words, DIRECTED: tl.constexpr):
    """(value, code) of the even and odd elements of consecutive pairs, stochastically rounded with
    the low and high 16-bit draws of their Philox word: ``_e2m1_stochastic_directed`` where
    compiled (DIRECTED), else ``_e2m1_stochastic`` (the same codes)."""
    if DIRECTED:
        value_even, code_even = _e2m1_stochastic_directed(q_even, words, False)
        value_odd, code_odd = _e2m1_stochastic_directed(q_odd, words, True)
    else:
        value_even, code_even = _e2m1_stochastic(q_even, words, False)
        value_odd, code_odd = _e2m1_stochastic(q_odd, words, True)
    return value_even, code_even, value_odd, code_odd


@triton.jit
def _philox4(counter, k0, k1):
    """``stochastic.philox_words``: the four Philox4x32-10 output words (uint32) of counters
    ``counter`` (int64) with key (k0, k1) (uint32)."""
    c0 = (counter & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((counter >> 32) & 0xFFFFFFFF).to(tl.uint32)
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
    return c0, c1, c2, c3


@triton.jit
def _philox_words(counter, k0, k1, R: tl.constexpr, C: tl.constexpr):
    """The [R, C / 2] Philox words of [R, C] consecutive elements, counters ``counter`` [R, C / 8]
    (element i's counter i div 8) in element order: word j holds the 16-bit draws of elements 2j
    (its low half) and 2j + 1 (its high half), ``stochastic.philox_uniform``'s numbers times 2^16."""
    w0, w1, w2, w3 = _philox4(counter, k0, k1)
    return _interleave4(w0, w1, w2, w3, R, C // 2)


@triton.jit
def _interleave4(u0, u1, u2, u3, R: tl.constexpr, C: tl.constexpr):
    """[R, C] from four [R, C / 4] tensors: element (r, 4j + w) is u_w[r, j]."""
    return tl.reshape(tl.join(tl.join(u0, u2), tl.join(u1, u3)), (R, C))


@triton.jit
def _quantize_kernel(
    x_ptr, rht_ptr, seed_ptr, global_scale_ptr, codes_ptr, scale_ptr, values_ptr, M, N, stride_x,
    ALONG_TOKENS: tl.constexpr, RHT: tl.constexpr, TILES: tl.constexpr, STOCHASTIC: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr,
    MX: tl.constexpr, VALUES: tl.constexpr, EVEN: tl.constexpr = False, CODES: tl.constexpr = True, DIRECTED: tl.constexpr = False,
    HARDWARE_CAST: tl.constexpr = False,
):
    """One program's tile of O (the module docstring). CODES: write the packed codes (off for an
    operand written only as its BF16 values, with VALUES); DIRECTED: stochastic rounding by
    ``_e2m1_stochastic_directed`` (compiled only) instead of ``_e2m1_stochastic``: the same codes;
    HARDWARE_CAST: NVFP4's block scales by the FP8 conversion instructions (``_nvfp4_scale``)."""
    r0 = tl.program_id(0) * BR
    c0 = tl.program_id(1) * BC
    o = _operand_tile(x_ptr, rht_ptr, M, N, stride_x, r0, c0, ALONG_TOKENS, RHT, BR, BC, EVEN)
    rows_o = N if ALONG_TOKENS else M
    cols_o = M if ALONG_TOKENS else N
    G: tl.constexpr = 32 if MX else 16  # block length along O's rows
    if TILES:  # 16x16 tiles: amax over each tile, broadcast back
        tiles = tl.reshape(tl.abs(o), (BR // 16, 16, BC // 16, 16))
        amax = tl.reduce(tl.reduce(tiles, 3, _max_keeping_nan), 1, _max_keeping_nan)  # [BR/16, BC/16]
    else:
        amax = tl.reduce(tl.reshape(tl.abs(o), (BR, BC // G, G)), 2, _max_keeping_nan)  # [BR, BC/G]
    if MX:  # E8M0, 0xFF (NaN) for a block holding NaN/Inf
        byte, scale = _mxfp4_scale(tl.where(amax == float("inf"), float("nan"), amax))
        block_value = scale  # MXFP4's scale is its 2^e (NaN for 0xFF)
    else:
        byte, block_value, scale = _nvfp4_scale(amax, tl.load(global_scale_ptr), HARDWARE_CAST)
    if MX:  # 1 / 2^e is the power of two 2^-e, exactly what the division gives (NaN for 0xFF), without it
        multiplier = tl.where(byte == 0xFF, float("nan"), _power_of_two(127 - byte))
    else:
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
        groups = c0 // G + tl.arange(0, BC // G)
        group_mask = None if EVEN else (rows[:, None] < rows_o) & (groups[None, :] < cols_o // G)
        tl.store(scale_ptr + rows[:, None].to(tl.int64) * (cols_o // G) + groups[None, :], byte.to(tl.uint8), mask=group_mask)
        q = tl.reshape(tl.reshape(o, (BR, BC // G, G)) * multiplier[:, :, None], (BR, BC))
    rows = r0 + tl.arange(0, BR)
    cols = c0 + tl.arange(0, BC)
    if STOCHASTIC:
        k0 = tl.load(seed_ptr).to(tl.uint32)
        k1 = tl.load(seed_ptr + 1).to(tl.uint32)
        # element i = row * cols_o + col takes a draw of counter i // 8 (cols_o and c0 are multiples of 16):
        # columns 2j, 2j + 1 the low and high halves of word j (``_philox_words``)
        counters = rows[:, None].to(tl.int64) * (cols_o // 8) + (c0 // 8 + tl.arange(0, BC // 8))[None, :]
        words = _philox_words(counters, k0, k1, BR, BC)
        q_even, q_odd = tl.split(tl.reshape(q, (BR, BC // 2, 2)))
        value_even, low, value_odd, high = _e2m1_stochastic_pairs(q_even, q_odd, words, DIRECTED)
        value = tl.reshape(tl.join(value_even, value_odd), (BR, BC))
    else:
        value, code = _e2m1_round(q)
        low, high = tl.split(tl.reshape(code, (BR, BC // 2, 2)))
    if CODES:
        half = c0 // 2 + tl.arange(0, BC // 2)
        packed = (low | (high << 4)).to(tl.uint8)
        tl.store(codes_ptr + rows[:, None].to(tl.int64) * (cols_o // 2) + half[None, :], packed, mask=None if EVEN else (rows[:, None] < rows_o) & (half[None, :] < cols_o // 2))
    if VALUES:  # the block GEMM's BF16 operand: E2M1 value x block scale (no tensor scale), exact
        if TILES:
            per_tile = tl.broadcast_to(tl.reshape(block_value, (BR // 16, 1, BC // 16, 1)), (BR // 16, 16, BC // 16, 16))
            values = value * tl.reshape(per_tile, (BR, BC))
        else:
            values = tl.reshape(tl.reshape(value, (BR, BC // G, G)) * block_value[:, :, None], (BR, BC))
        tl.store(values_ptr + rows[:, None].to(tl.int64) * cols_o + cols[None, :], values.to(tl.bfloat16), mask=None if EVEN else (rows[:, None] < rows_o) & (cols[None, :] < cols_o))


def _rht_mode(x2d: torch.Tensor) -> int:
    """The transform's mode: BF16 inputs on tensor cores where compiled (the interpreter's BF16 dots are not exact)."""
    return 2 if TENSOR_CORE_RHT and x2d.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") != "1" else 1


def tensor_scales_with_rht(x2d: torch.Tensor, rht: torch.Tensor, stochastic: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """NVFP4's fp32 tensor scales of x2d [M, C] itself and of (R16 x2d)^T, from one read of x2d:
    the two scales that ``quantize_nvfp4(x2d)`` (or ``quantize_blocks``) and ``quantize_nvfp4(x2d,
    along_tokens=True, rht=rht)`` each find by a pass of their own (the same values: maxima over
    the same elements, the transform computed as the quantizer does). For a tensor quantized both
    ways, as the recipe's input and output gradient are (1x16 blocks for fprop / dgrad, along the
    tokens after the RHT for wgrad): one read instead of two. stochastic: the layout the second
    quantization uses (its tile)."""
    m, n = x2d.shape
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    tile_rows, tile_cols, warps = default_tile(True, True, stochastic, False, False)
    grid = (triton.cdiv(n, tile_rows), triton.cdiv(m, tile_cols))
    launch = {} if os.environ.get("TRITON_INTERPRET") == "1" else {"num_warps": warps}
    partial = torch.empty(2, grid[0] * grid[1], dtype=torch.float32, device=x2d.device)
    _partial_absmax_pair_kernel[grid](
        x2d, rht.float().contiguous().to(x2d.device), partial[1], partial[0], m, n, x2d.stride(0), RHT=_rht_mode(x2d), BR=tile_rows, BC=tile_cols, **launch,
    )
    return tensor_scale_from_partials(partial[0], 6.0 * E4M3_MAX), tensor_scale_from_partials(partial[1], 6.0 * E4M3_MAX)


def quantize_nvfp4(
    x2d: torch.Tensor,
    *,
    tiles: bool = False,
    along_tokens: bool = False,
    rht: torch.Tensor | None = None,
    seed: torch.Tensor | None = None,
    block_format: str = "nvfp4",
    tile: tuple[int, int, int] | None = None,
    values: bool = False,
    global_scale: torch.Tensor | None = None,
    codes: bool = True,
) -> QuantizedTensor:
    """NVFP4 codes of x2d [M, C] (``along_tokens``: of (R16 x2d)^T [C, M], ``rht`` the 16x16 R16 or
    None), 16x16 ``tiles`` or 1x16 blocks, stochastic rounding with the Philox ``seed``
    (``stochastic.new_seed``: int64 [2] on x2d's device; None: round to nearest). See the module
    docstring. ``block_format="mxfp4"``: OCP MXFP4 instead (1x32 blocks, E8M0 scales, no tensor
    scale), with the same layouts except the tiles: MXFP4's weight-gradient operands along the
    tokens without a transposed copy. tile: (rows, columns, warps) of O per program, powers of two
    of at least 32 (default: ``default_tile``; speed only). values: also write the operand's BF16
    values (``QuantizedTensor.bf16``: what the block GEMM would decode the codes into).
    global_scale: NVFP4's fp32 tensor scale of O found beforehand (``tensor_scales_with_rht``: the
    same value), instead of this call's own pass over x2d. codes=False (with values): the BF16
    values only, no packed codes (``QuantizedTensor.data`` None): an operand its GEMM consumes at
    once and nothing keeps."""
    if block_format not in ("nvfp4", "mxfp4"):
        raise ValueError(f"quantize_nvfp4: block_format must be 'nvfp4' or 'mxfp4', got {block_format!r}")
    mx = block_format == "mxfp4"
    if tiles and mx:
        raise ValueError("quantize_nvfp4: 16x16 tiles are NVFP4's weight layout; MXFP4 has 1x32 blocks only")
    if not (codes or values):
        raise ValueError("quantize_nvfp4: codes=False writes the BF16 values only, so it needs values=True")
    if tiles and along_tokens:
        raise ValueError("quantize_nvfp4: 16x16 tiles are for weights, not for the operands along the tokens")
    if rht is not None and not along_tokens:
        raise ValueError("quantize_nvfp4: the RHT runs along the tokens only (along_tokens=True)")
    m, n = x2d.shape
    out_rows, out_cols = (n, m) if along_tokens else (m, n)
    what = "the token dimension (--micro-batch-size x --seq-length)" if along_tokens else "the last dimension"
    block = 32 if mx else BLOCK
    if out_cols % block or (tiles and out_rows % BLOCK):
        raise ValueError(f"quantize_nvfp4: shape {tuple(x2d.shape)}: {what} must be a multiple of {block}" + (" (and the rows, for 16x16 tiles)" if tiles else ""))
    if seed is not None and (seed.dtype != torch.int64 or seed.numel() != 2 or seed.device != x2d.device):
        raise ValueError(f"quantize_nvfp4: seed must be two int64 words on {x2d.device} (stochastic.new_seed), got {seed.dtype} x {seed.numel()} on {seed.device}")
    if global_scale is not None and (mx or global_scale.dtype != torch.float32 or global_scale.numel() != 1 or global_scale.device != x2d.device):
        raise ValueError(f"quantize_nvfp4: global_scale is NVFP4's fp32 tensor scale, one value on {x2d.device}, got {global_scale.dtype} x {global_scale.numel()} on {global_scale.device} for {block_format}")
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    device = x2d.device
    rht_matrix = (rht.float().contiguous().to(device) if rht is not None else torch.empty(16, 16, device=device))
    # the transform's mode: BF16 inputs on tensor cores where compiled (the interpreter's BF16 dots are not exact)
    rht_mode = 0 if rht is None else _rht_mode(x2d)
    tile_rows, tile_cols, warps = tile or default_tile(along_tokens, rht is not None, seed is not None, tiles, mx)
    if min(tile_rows, tile_cols) < 32 or tile_rows & (tile_rows - 1) or tile_cols & (tile_cols - 1):
        raise ValueError(f"quantize_nvfp4: tile rows and columns must be powers of two >= 32, got {tile}")
    grid = (triton.cdiv(out_rows, tile_rows), triton.cdiv(out_cols, tile_cols))
    launch = {} if os.environ.get("TRITON_INTERPRET") == "1" else {"num_warps": warps}
    if not mx and global_scale is None:  # NVFP4's tensor scale needs the whole tensor's maximum first
        partial = torch.empty(grid[0] * grid[1], dtype=torch.float32, device=device)
        _partial_absmax_kernel[grid](x2d, rht_matrix, partial, m, n, x2d.stride(0), ALONG_TOKENS=along_tokens, RHT=rht_mode, BR=tile_rows, BC=tile_cols, **launch)
        global_scale = tensor_scale_from_partials(partial, 6.0 * E4M3_MAX)  # absmax_scale's rule, one launch
    elif global_scale is not None:
        global_scale = global_scale.reshape(())
    packed = torch.empty(out_rows, out_cols // 2, dtype=torch.uint8, device=device) if codes else None
    scale_shape = (out_rows // BLOCK, out_cols // BLOCK) if tiles else (out_rows, out_cols // block)
    scale_bytes = torch.empty(scale_shape, dtype=torch.uint8, device=device)
    bf16 = torch.empty(out_rows, out_cols, dtype=torch.bfloat16, device=device) if values else None
    _quantize_kernel[grid](
        x2d, rht_matrix, seed.contiguous() if seed is not None else rht_matrix, global_scale if global_scale is not None else rht_matrix,
        packed if codes else bf16, scale_bytes, bf16 if values else packed, m, n, x2d.stride(0),
        ALONG_TOKENS=along_tokens, RHT=rht_mode, TILES=tiles, STOCHASTIC=seed is not None, BR=tile_rows, BC=tile_cols, MX=mx, VALUES=values,
        EVEN=out_rows % tile_rows == 0 and out_cols % tile_cols == 0, CODES=codes, DIRECTED=directed_sr(), HARDWARE_CAST=hardware_block_scales(), **launch,
    )
    dtype = torch.float32 if along_tokens else x2d.dtype  # the reference quantizes the fp32 transposed operand
    if mx:
        return QuantizedTensor(packed, scale_bytes, None, QuantSpec("fp4", "mxfp4", stochastic_rounding=seed is not None), torch.Size((out_rows, out_cols)), dtype, bf16=bf16)
    spec = QuantSpec("fp4", "nvfp4_2d" if tiles else "nvfp4", stochastic_rounding=seed is not None)
    return QuantizedTensor(packed, scale_bytes.view(torch.float8_e4m3fn), global_scale, spec, torch.Size((out_rows, out_cols)), dtype, bf16=bf16)
