"""Block-scaled FP4 GEMM on BF16 tensor cores: C = s_A s_B (A B^T) for packed E2M1 operands.

Hopper has no FP4 tensor cores and its FP8 GEMM cannot apply scales that vary along the
reduction dimension (NVFP4/MXFP4 block scales do). But an E2M1 value (2 significant bits) times
an E4M3 block scale (4 significant bits) or an E8M0 power of two is exact in BF16 (8 significant
bits). So the operands are formed in BF16 from the packed codes and their block scales, the GEMM
runs ``tl.dot`` with fp32 accumulation, and the fp32 NVFP4 tensor scales s_A s_B multiply the
result once in the epilogue. The products are exact, so the result equals the reference
(dequantize both, fp32 matmul) up to the fp32 accumulation order.

Two ways to form the operands (``method``), the same numbers either way:
  ``fused``    each program decodes its tiles in registers (reads 0.5 B per element; the decode
               is repeated by every program that reads the tile: ~10 integer/fp32 operations per
               element per reuse);
  ``decoded``  each operand is decoded once into a BF16 tensor (one pass, 2 B per element
               written), then the same kernel runs as a plain BF16 GEMM with the tensor scales in
               its epilogue. An operand consumed as soon as it is quantized (the forward's X and
               W, the output gradient's two forms) arrives with those BF16 values already written
               by its quantizer (``QuantizedTensor.bf16``), and is not decoded.
Which is faster on a given GPU is measured (``benchmarks/bench_block_gemm.py``, NOTES.md).

Operands are ``QuantizedTensor`` s quantized along the GEMM's reduction dimension K: A [M, K] and
B [N, K], granularity ``nvfp4`` (1x16 E4M3), ``nvfp4_2d`` (16x16 tiles) or ``mxfp4`` (1x32 E8M0).
The three GEMMs of a linear map onto it: fprop Q(X) Q(W)^T; dgrad Q(dY) Q(W)^T^T with W read
transposed in place (``b_transposed``): 16x16 tiles with either method (they hold the same values
either way round), 1-D blocks along K (MXFP4's weights) with ``decoded`` only, whose BF16 product
of exact values does not care which dimension the blocks lie on; wgrad with both operands
quantized along the tokens, Q(dY^T) Q(X^T)^T.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..quantize import QuantizedTensor
from .quantize_blocks import _e4m3_value, _power_of_two
from .quantize_rows import _e2m1_value

__all__ = ["GemmConfig", "bf16_matmul", "block_scaled_matmul", "decode_to_bf16", "supports_block_gemm", "transpose_2d", "transposed_b_supported"]

# operand kinds inside the kernel: plain BF16 values, or packed codes with these block scales
BF16_VALUES = 0
GRANULARITY_CODES = {"nvfp4": 1, "nvfp4_2d": 2, "mxfp4": 3}


@dataclass(frozen=True)
class GemmConfig:
    """Tile shape, pipeline depth and grid of one launch (defaults measured: NOTES.md)."""

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 3
    persistent: bool = False  # the ``decoded`` GEMM as one program per SM walking the output tiles
    warp_specialize: bool = False  # persistent only: Triton's producer/consumer warp specialization

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            if value < 32 or value & (value - 1):
                raise ValueError(f"GemmConfig.{name} must be a power of two >= 32, got {value}")
        if self.warp_specialize and not self.persistent:
            raise ValueError("GemmConfig.warp_specialize needs persistent=True")


# persistent TMA GEMM, H200 sweep (session 9, benchmarks/NOTES.md): 1.00-1.02x cuBLAS BF16 on BF16
# operands (the session-4 default, 128x256x64 / 4 stages, one program per tile: 0.84-0.86x)
DEFAULT_CONFIG = GemmConfig(128, 256, 64, num_warps=8, num_stages=3, persistent=True)
# fp32 outputs (the weight gradient): a 128x256 fp32 tile beside three stages exceeds shared memory
FP32_OUTPUT_CONFIG = GemmConfig(128, 128, 64, num_warps=8, num_stages=4, persistent=True)


def default_config(out_dtype: torch.dtype) -> GemmConfig:
    """The measured default for this output dtype (4-byte outputs need the smaller tile)."""
    return FP32_OUTPUT_CONFIG if out_dtype.itemsize > 2 else DEFAULT_CONFIG
DEFAULT_METHOD = "decoded"  # 0.76-0.89x cuBLAS BF16 against 0.17-0.25x fused (H100, NOTES.md)
METHODS = ("fused", "decoded")


def supports_block_gemm(a: QuantizedTensor, b: QuantizedTensor) -> bool:
    return (
        a.spec.dtype == b.spec.dtype == "fp4" and a.scale is not None and b.scale is not None
        and a.spec.granularity in GRANULARITY_CODES and b.spec.granularity in GRANULARITY_CODES
        and a.spec.format.name == b.spec.format.name == "e2m1"
    )


@triton.jit
def _scale_value(byte, KIND: tl.constexpr):
    if KIND == 3:  # E8M0: 2^(byte - 127), 0xFF is NaN
        return tl.where(byte == 0xFF, float("nan"), _power_of_two(byte - 127))
    return _e4m3_value(byte)


@triton.jit
def _operand_tile(
    ptr, scale_ptr, r0, k0, n_rows, K, stride, stride_scale,
    KIND: tl.constexpr, TRANSPOSED: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, AS_BF16: tl.constexpr,
):
    """Rows r0.. and columns k0.. of an operand as a [BR, BK] tile (BF16, or fp32 under the
    interpreter, whose BF16 dots are wrong; the values are the same).

    KIND 0: BF16 values at ptr (row-major [n_rows, K], or [K, n_rows] when TRANSPOSED). Else packed
    E2M1 codes with block scales: [n_rows, K/2] codes; when TRANSPOSED the operand is the transpose
    of a 16x16-tiled tensor [K, n_rows] (codes packed along n_rows, scales [K/16, n_rows/16])."""
    rows = r0 + tl.arange(0, BR)
    ks = k0 + tl.arange(0, BK)
    if KIND == 0:
        if TRANSPOSED:
            mask = (ks[:, None] < K) & (rows[None, :] < n_rows)
            values = tl.trans(tl.load(ptr + ks[:, None].to(tl.int64) * stride + rows[None, :], mask=mask, other=0.0))
        else:
            mask = (rows[:, None] < n_rows) & (ks[None, :] < K)
            values = tl.load(ptr + rows[:, None].to(tl.int64) * stride + ks[None, :], mask=mask, other=0.0)
    else:
        GROUP: tl.constexpr = 32 if KIND == 3 else 16
        if TRANSPOSED:  # element (r, k) is T[k, r]; pairs packed along r
            half = r0 // 2 + tl.arange(0, BR // 2)
            mask = (ks[:, None] < K) & (half[None, :] < n_rows // 2)
            packed = tl.load(ptr + ks[:, None].to(tl.int64) * stride + half[None, :], mask=mask, other=0).to(tl.int32)
            codes = tl.trans(tl.join(packed & 0xF, packed >> 4).reshape(BK, BR))
        else:
            half = k0 // 2 + tl.arange(0, BK // 2)
            mask = (rows[:, None] < n_rows) & (half[None, :] < K // 2)
            packed = tl.load(ptr + rows[:, None].to(tl.int64) * stride + half[None, :], mask=mask, other=0).to(tl.int32)
            codes = tl.join(packed & 0xF, packed >> 4).reshape(BR, BK)  # element 2i: low nibble
        groups = k0 // GROUP + tl.arange(0, BK // GROUP)
        if TRANSPOSED:  # scales [K/16, n_rows/16]
            scale_pointers = scale_ptr + groups[None, :] * stride_scale + (rows // 16)[:, None]
        elif KIND == 2:  # 16x16 tiles: scale[row // 16, k // 16]
            scale_pointers = scale_ptr + (rows // 16)[:, None] * stride_scale + groups[None, :]
        else:
            scale_pointers = scale_ptr + rows[:, None] * stride_scale + groups[None, :]
        scale_mask = (rows[:, None] < n_rows) & (groups[None, :] < K // GROUP)
        scales = _scale_value(tl.load(scale_pointers, mask=scale_mask, other=0).to(tl.int32), KIND)
        values = _e2m1_value(codes).reshape(BR, BK // GROUP, GROUP) * scales[:, :, None]
        values = values.reshape(BR, BK)
    if AS_BF16:
        values = values.to(tl.bfloat16)
    else:
        values = values.to(tl.float32)
    return values


@triton.jit
def _grouped_tile(M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of this program in grouped order: GROUP_M row tiles in a row share
    their B tiles in L2."""
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BM)
    tiles_n = tl.cdiv(N, BN)
    per_group = GROUP_M * tiles_n
    first_m = (pid // per_group) * GROUP_M
    group_size = tl.minimum(tiles_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % group_size, (pid % per_group) // group_size


@triton.jit
def _block_gemm_kernel(
    a_ptr, a_scale, b_ptr, b_scale, c_ptr, global_scale,
    M, N, K, stride_a, stride_as, stride_b, stride_bs, stride_c,
    A_KIND: tl.constexpr, B_KIND: tl.constexpr, B_TRANSPOSED: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, AS_BF16: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(M, N, BM, BN, GROUP_M)
    accumulator = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = _operand_tile(a_ptr, a_scale, pid_m * BM, k0, M, K, stride_a, stride_as, A_KIND, False, BM, BK, AS_BF16)
        b = _operand_tile(b_ptr, b_scale, pid_n * BN, k0, N, K, stride_b, stride_bs, B_KIND, B_TRANSPOSED, BN, BK, AS_BF16)
        if AS_BF16:
            accumulator = tl.dot(a, tl.trans(b), accumulator)
        else:
            accumulator = tl.dot(a, tl.trans(b), accumulator, input_precision="ieee")
    accumulator = accumulator * tl.load(global_scale)
    rows = pid_m * BM + tl.arange(0, BM)
    cols = pid_n * BN + tl.arange(0, BN)
    mask = (rows[:, None] < M) & (cols[None, :] < N)
    tl.store(c_ptr + rows[:, None].to(tl.int64) * stride_c + cols[None, :], accumulator.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _descriptor_product(a_desc, b_desc, pid_m, pid_n, K, B_KN: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, AS_BF16: tl.constexpr):
    """The fp32 [BM, BN] product of A's row tile pid_m and B's column tile pid_n over K, operands
    through tensor-memory-accelerator descriptors (B [N, K], or [K, N] when B_KN)."""
    accumulator = tl.zeros((BM, BN), dtype=tl.float32)
    for k0 in range(0, K, BK):
        a = a_desc.load([pid_m * BM, k0])
        if B_KN:
            b = b_desc.load([k0, pid_n * BN])
        else:
            b = tl.trans(b_desc.load([pid_n * BN, k0]))
        if AS_BF16:
            accumulator = tl.dot(a, b, accumulator)
        else:
            accumulator = tl.dot(a.to(tl.float32), b.to(tl.float32), accumulator, input_precision="ieee")
    return accumulator


@triton.jit
def _bf16_gemm_tma_kernel(
    a_desc, b_desc, c_desc, global_scale, M, N, K,
    B_KN: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, AS_BF16: tl.constexpr,
):
    """The ``decoded`` method's GEMM: BF16 operands through tensor-memory-accelerator descriptors
    (A [M, K]; B [N, K], or [K, N] when B_KN: dgrad's W read in place), tensor scales in the
    epilogue."""
    pid_m, pid_n = _grouped_tile(M, N, BM, BN, GROUP_M)
    accumulator = _descriptor_product(a_desc, b_desc, pid_m, pid_n, K, B_KN, BM, BN, BK, AS_BF16)
    accumulator = accumulator * tl.load(global_scale)
    c_desc.store([pid_m * BM, pid_n * BN], accumulator.to(c_desc.dtype))


@triton.jit
def _bf16_gemm_persistent_kernel(
    a_desc, b_desc, c_desc, global_scale, M, N, K,
    B_KN: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, AS_BF16: tl.constexpr,
    PROGRAMS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
):
    """``_bf16_gemm_tma_kernel`` as a persistent kernel: PROGRAMS programs (one per SM) walk the
    output tiles in grouped order, so one tile's epilogue overlaps the next tile's first loads and
    no launch wave is left part-empty."""
    tiles_m = tl.cdiv(M, BM)
    tiles_n = tl.cdiv(N, BN)
    per_group = GROUP_M * tiles_n
    scale = tl.load(global_scale)
    for tile in tl.range(tl.program_id(0), tiles_m * tiles_n, PROGRAMS, flatten=True, warp_specialize=WARP_SPECIALIZE):
        first_m = (tile // per_group) * GROUP_M
        group_size = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (tile % per_group) % group_size
        pid_n = (tile % per_group) // group_size
        accumulator = _descriptor_product(a_desc, b_desc, pid_m, pid_n, K, B_KN, BM, BN, BK, AS_BF16)
        c_desc.store([pid_m * BM, pid_n * BN], (accumulator * scale).to(c_desc.dtype))


@triton.jit
def _decode_kernel(codes_ptr, scale_ptr, out_ptr, n_rows, K, stride, stride_scale, KIND: tl.constexpr, BR: tl.constexpr, BK: tl.constexpr, AS_BF16: tl.constexpr):
    r0 = tl.program_id(0) * BR
    k0 = tl.program_id(1) * BK
    tile = _operand_tile(codes_ptr, scale_ptr, r0, k0, n_rows, K, stride, stride_scale, KIND, False, BR, BK, AS_BF16)
    rows = r0 + tl.arange(0, BR)
    ks = k0 + tl.arange(0, BK)
    mask = (rows[:, None] < n_rows) & (ks[None, :] < K)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * K + ks[None, :], tile.to(out_ptr.dtype.element_ty), mask=mask)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _scale_bytes(q: QuantizedTensor) -> torch.Tensor:
    return q.scale.view(torch.uint8) if q.scale.dtype == torch.float8_e4m3fn else q.scale


def decode_to_bf16(q: QuantizedTensor) -> torch.Tensor:
    """The operand's values E2M1 x block scale (without the NVFP4 tensor scale) as BF16 [rows, K]:
    exact, see the module docstring. The quantizer's own BF16 form where it wrote one
    (``QuantizedTensor.bf16``: the same values, and no pass over the codes)."""
    if q.bf16 is not None:
        return q.bf16
    rows, k = q.data.shape[0], q.data.shape[1] * 2
    out = torch.empty(rows, k, dtype=torch.bfloat16, device=q.data.device)
    scale = _scale_bytes(q)
    block_r, block_k = 32, 128
    _decode_kernel[(triton.cdiv(rows, block_r), triton.cdiv(k, block_k))](
        q.data, scale, out, rows, k, q.data.stride(0), scale.stride(0),
        KIND=GRANULARITY_CODES[q.spec.granularity], BR=block_r, BK=block_k, AS_BF16=not _interpreted(), num_warps=4,
    )
    return out


def transposed_b_supported(b: QuantizedTensor, out_dtype: torch.dtype = torch.float32, method: str | None = None) -> bool:
    """Whether ``block_scaled_matmul(..., b_transposed=True)`` takes ``b``: 16x16 tiles always (the
    same values either way round); 1-D blocks (along b's own rows, i.e. along the GEMM's output
    dimension) only with ``decoded`` and output rows of 16-byte multiples: that method multiplies
    exact BF16 values, so no scale needs to sit on the reduction dimension (MXFP4's dgrad: W
    quantized along K, reduced over N)."""
    method = method or os.environ.get("MEGATRON_FP4_BLOCK_GEMM", DEFAULT_METHOD)
    if b.spec.granularity == "nvfp4_2d":
        return True
    row_bytes = b.operand_shape[1] * out_dtype.itemsize
    return method == "decoded" and row_bytes % 16 == 0


def _check_operands(a: QuantizedTensor, b: QuantizedTensor, b_transposed: bool, method: str) -> tuple[int, int, int]:
    if not supports_block_gemm(a, b):
        raise ValueError(f"block_scaled_matmul: needs FP4 E2M1 operands in {sorted(GRANULARITY_CODES)} blocks, got {a.spec.describe()} and {b.spec.describe()}")
    m, k = a.operand_shape
    if b_transposed:
        if b.spec.granularity != "nvfp4_2d" and method != "decoded":
            raise ValueError(
                f"block_scaled_matmul: b_transposed with the fused method needs 16x16 tiles (nvfp4_2d), got {b.spec.granularity} "
                "(the decoded method takes any block layout)"
            )
        k_b, n = b.operand_shape
    else:
        n, k_b = b.operand_shape
    if k_b != k:
        raise ValueError(f"block_scaled_matmul: operand B has reduction size {k_b}, A has {k}; they must be equal")
    # each operand's blocks must tile the dimension they were quantized along (its own rows' length)
    for name, operand in (("A", a), ("B", b)):
        size, block = operand.operand_shape[1], operand.spec.block_size
        if size % block:
            raise ValueError(
                f"block_scaled_matmul: operand {name} has rows of {size} elements, not a multiple of its "
                f"{operand.spec.granularity} block size {block}"
            )
    return m, n, k


def block_scaled_matmul(
    a: QuantizedTensor,
    b: QuantizedTensor,
    out_dtype: torch.dtype = torch.float32,
    *,
    b_transposed: bool = False,
    method: str | None = None,
    config: GemmConfig | None = None,
) -> torch.Tensor:
    """A B^T [M, N] for block-scaled FP4 operands A [M, K], B [N, K] (see the module docstring).

    b_transposed: b holds a 16x16-tiled [K, N] tensor and the operand is its transpose (dgrad's
    W, read in place). method: ``fused`` or ``decoded`` (default: the faster on H100, NOTES.md;
    ``decoded`` runs ``fused`` where N rows of the output are not 16-byte multiples).
    """
    method = method or os.environ.get("MEGATRON_FP4_BLOCK_GEMM", DEFAULT_METHOD)
    if method not in METHODS:
        raise ValueError(f"block_scaled_matmul: method {method!r} is not one of {METHODS} (MEGATRON_FP4_BLOCK_GEMM)")
    m, n, k = _check_operands(a, b, b_transposed, method)
    config = config or default_config(out_dtype)
    global_scale = torch.ones((), dtype=torch.float32, device=a.device)
    for operand in (a, b):
        if operand.global_scale is not None:
            global_scale = global_scale * operand.global_scale.float()
    interpreted = _interpreted()
    c = torch.empty(m, n, dtype=out_dtype, device=a.device)
    values_only = a.data is None or b.data is None  # an operand written as BF16 values alone: nothing for the fused method to read
    if (method == "decoded" or values_only) and n * c.element_size() % 16 == 0:  # the descriptors need 16-byte rows
        return bf16_matmul(decode_to_bf16(a), decode_to_bf16(b), global_scale, c, b_kn=b_transposed, config=config)
    if values_only:
        raise ValueError(
            f"block_scaled_matmul: an operand holds BF16 values without codes, which only the BF16 GEMM reads, and its output rows "
            f"({n} x {out_dtype}) are not 16-byte multiples"
        )
    if b_transposed and b.spec.granularity != "nvfp4_2d":  # the fused kernel reads only tiles transposed
        raise ValueError(
            f"block_scaled_matmul: b_transposed with {b.spec.granularity} blocks needs the decoded method and output rows "
            f"of 16-byte multiples, got {n} x {out_dtype} (transposed_b_supported says which)"
        )
    block_m, block_n, block_k = config.block_m, config.block_n, config.block_k
    if interpreted:  # small tiles keep the interpreter quick and exercise the masks
        block_m, block_n, block_k = 32, 32, 32
    grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
    launch = {} if interpreted else {"num_warps": config.num_warps, "num_stages": config.num_stages}
    a_scale, b_scale = _scale_bytes(a), _scale_bytes(b)
    _block_gemm_kernel[grid](
        a.data, a_scale, b.data, b_scale, c, global_scale.reshape(1),
        m, n, k, a.data.stride(0), a_scale.stride(0), b.data.stride(0), b_scale.stride(0), c.stride(0),
        A_KIND=GRANULARITY_CODES[a.spec.granularity], B_KIND=GRANULARITY_CODES[b.spec.granularity], B_TRANSPOSED=b_transposed,
        BM=block_m, BN=block_n, BK=block_k, GROUP_M=config.group_m, AS_BF16=not interpreted, **launch,
    )
    return c


def bf16_matmul(
    a16: torch.Tensor, b16: torch.Tensor, global_scale: torch.Tensor, out: torch.Tensor, *, b_kn: bool = False, config: GemmConfig | None = None
) -> torch.Tensor:
    """out = global_scale * (A B^T) for BF16 A [M, K] and B [N, K] (or B^T given as [K, N] when
    b_kn), fp32 accumulation, on tensor-memory-accelerator loads (the ``decoded`` method's GEMM)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    config = config or default_config(out.dtype)
    m, k = a16.shape
    n = b16.shape[1] if b_kn else b16.shape[0]
    block_m, block_n, block_k = config.block_m, config.block_n, config.block_k
    interpreted = _interpreted()
    if interpreted:
        block_m, block_n, block_k = 32, 32, 32
    a_desc = TensorDescriptor.from_tensor(a16, [block_m, block_k])
    b_desc = TensorDescriptor.from_tensor(b16, [block_k, block_n] if b_kn else [block_n, block_k])
    c_desc = TensorDescriptor.from_tensor(out, [block_m, block_n])
    launch = {} if interpreted else {"num_warps": config.num_warps, "num_stages": config.num_stages}
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    if config.persistent:
        programs = min(tiles, _multiprocessors(out.device))
        _bf16_gemm_persistent_kernel[(programs,)](
            a_desc, b_desc, c_desc, global_scale.reshape(1), m, n, k,
            B_KN=b_kn, BM=block_m, BN=block_n, BK=block_k, GROUP_M=config.group_m, AS_BF16=not interpreted,
            PROGRAMS=programs, WARP_SPECIALIZE=config.warp_specialize, **launch,
        )
        return out
    _bf16_gemm_tma_kernel[(tiles,)](
        a_desc, b_desc, c_desc, global_scale.reshape(1), m, n, k,
        B_KN=b_kn, BM=block_m, BN=block_n, BK=block_k, GROUP_M=config.group_m, AS_BF16=not interpreted, **launch,
    )
    return out


def _multiprocessors(device: torch.device) -> int:
    """SMs of the device (the persistent GEMM's grid); 3 under the interpreter, so tests walk tiles."""
    if device.type != "cuda":
        return 3
    return torch.cuda.get_device_properties(device).multi_processor_count


def transpose_2d(q: QuantizedTensor) -> QuantizedTensor:
    """A 16x16-tiled operand W [N, K] as W^T [K, N]: the codes transposed and repacked, the tile
    scales transposed; the values are exactly those of quantizing W^T (the tiles are symmetric).
    (The GEMM reads W^T in place with ``b_transposed``; this copy is the reference for that.)"""
    if q.spec.granularity != "nvfp4_2d":
        raise ValueError(f"transpose_2d: needs nvfp4_2d tiles, got {q.spec.granularity}")
    from ..formats import pack_codes, unpack_codes

    codes = unpack_codes(q.data).t().contiguous()
    return QuantizedTensor(pack_codes(codes), q.scale.t().contiguous(), q.global_scale, q.spec, torch.Size((q.data.shape[1] * 2, q.data.shape[0])), q.dtype)
