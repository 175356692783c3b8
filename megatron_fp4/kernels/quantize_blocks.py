"""Fused NVFP4 / MXFP4 block quantization in Triton; the reference is ``megatron_fp4.quantize``.

A persistent kernel (a few programs per SM, each walking work items of consecutive blocks, with
the next item's load in flight; a contiguous tensor is one run of blocks, so items may span rows) makes one pass over x [rows, K]: each block's absmax, its scale
(NVFP4: an E4M3 byte of amax / 6 / s_tensor, times the fp32 tensor scale; MXFP4: the E8M0 power
of two 2^(floor(log2 amax) - 2)), and the packed E2M1 codes and scale bytes: the forms a
Blackwell GEMM consumes. The NVFP4 tensor scale (one absmax over the whole tensor) comes from a
partial-maximum kernel first (``tensor_absmax``) and the reference's scale rule. Bit-identical to
``quantize(x, QuantSpec("fp4", "nvfp4" | "mxfp4"))`` (tested in the interpreter and on GPU).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..quantize import QuantizedTensor, QuantSpec
from ..scaling import BLOCK_SIZES, E4M3_MAX
from .fp8_rounding import fp8_cast, hardware_fp8_cast
from .quantize_rows import _e2m1_round, _max_keeping_nan
from .tensor_scale import tensor_scale_from_partials

__all__ = ["quantize_blocks", "supports_block_spec"]

BLOCK_SPECS = {name: QuantSpec("fp4", name) for name in ("nvfp4", "mxfp4")}  # 1-D blocks along K (16x16 tiles: reference)
# 2048 elements per program for both formats (was 16 blocks: 256 / 512 elements, a program too
# small to keep the memory system busy; benchmarks/NOTES.md, session 6)
# blocks per work item of the persistent kernel, programs per SM, and the next item's load in
# flight while the current one is quantized: the H200 sweep of session 9 (benchmarks/NOTES.md)
BLOCKS_PER_PROGRAM = {"nvfp4": 256, "mxfp4": 128}
PROGRAMS_PER_SM = 8
PREFETCH = True
INTERPRETER_PROGRAMS = 3  # under TRITON_INTERPRET: a few programs, so the tests walk the work loop
HARDWARE_BLOCK_SCALES = True  # NVFP4 block scales by the FP8 conversion instructions where compiled (``_nvfp4_scale``; NOTES.md, session 17)


def hardware_block_scales() -> bool:
    """Whether the block kernels round and decode NVFP4's E4M3 block scales with the GPU's FP8
    instructions (compiled, ``HARDWARE_BLOCK_SCALES``) or in integer operations (the same bytes)."""
    return HARDWARE_BLOCK_SCALES and hardware_fp8_cast()


def flat_items(rows: int, blocks_per_row: int, preferred: int) -> int:
    """Blocks per work item when a contiguous tensor is walked as one run of blocks (items may
    span rows): the largest power of two up to ``preferred`` that divides the total, so no item is
    partial. Items of one row each wasted up to 37% of the work where the row's block count is no
    power of two (LLaMA-13B's K = 5120: 320 NVFP4 / 160 MXFP4 blocks in items of 256 / 128;
    benchmarks/NOTES.md, session 15). Speed only."""
    groups, total = max(1, preferred), rows * blocks_per_row
    while groups > 1 and total % groups:
        groups //= 2
    return groups


def persistent_grid(items: int, device: torch.device, programs_per_sm: int | None = None) -> int:
    """Programs of the persistent kernel over ``items`` work items: ``programs_per_sm`` per
    multiprocessor (each walks items pid, pid + P, ...), never more than there are items."""
    if device.type != "cuda":
        return max(1, min(items, INTERPRETER_PROGRAMS))
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(items, sms * (programs_per_sm or PROGRAMS_PER_SM)))


@triton.jit
def _power_of_two(exponent):
    """2^exponent built from its bits (exact; exponent in -127..127, -127 as the subnormal)."""
    bits = tl.where(exponent <= -127, 0x00400000, (exponent + 127) << 23)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _e4m3_value(byte):
    """fp32 value of a non-negative E4M3FN byte (0x7F is NaN)."""
    exponent = (byte >> 3) & 0xF
    mantissa = (byte & 7).to(tl.float32)
    step = _power_of_two(tl.maximum(exponent, 1) - 10)  # value = (8 + m) 2^(e-10); subnormal m 2^-9
    value = tl.where(exponent == 0, mantissa, 8.0 + mantissa) * step
    return tl.where(byte == 0x7F, float("nan"), value)


@triton.jit
def _nvfp4_scale(amax, tensor_scale, HARDWARE_CAST: tl.constexpr = False):
    """NVFP4's block scale for block maxima ``amax``: (the E4M3 byte of amax / 6 / s_tensor,
    saturating at 448; its value, the block's BF16-operand factor; that times the fp32 tensor
    scale s_tensor). HARDWARE_CAST: both conversions by the GPU's FP8 instructions (the same
    bytes and values: ``fp8_rounding.fp8_cast``), else in integer operations. Computed per block,
    by each thread holding part of one (8 of its 16 elements in the recipe kernels' layouts), so
    the ~35 integer instructions of the emulated pair cost ~4 per element there."""
    target = tl.math.div_rn(tl.math.div_rn(amax, 6.0), tensor_scale)
    byte = fp8_cast(tl.minimum(target, 448.0, propagate_nan=tl.PropagateNan.ALL), 3, 7, True, HARDWARE_CAST)
    if HARDWARE_CAST:  # E4M3 -> fp32 is exact (NaN 0x7F stays NaN)
        block_value = byte.to(tl.uint8).to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        block_value = _e4m3_value(byte)
    return byte, block_value, block_value * tensor_scale


@triton.jit
def _mxfp4_scale(amax):
    """MXFP4's E8M0 block scale for block maxima ``amax`` (Inf already mapped to NaN): (the byte
    of 2^(floor(log2 amax) - 2), 0xFF for a NaN block; its value, NaN for 0xFF)."""
    exponent_field = (amax.to(tl.int32, bitcast=True) >> 23) & 0xFF  # floor(log2 amax) + 127 (normals)
    shared = tl.minimum(tl.maximum(exponent_field - 127 - 2, -127), 127)
    byte = tl.where(amax != amax, 0xFF, shared + 127)
    return byte, tl.where(byte == 0xFF, float("nan"), _power_of_two(byte - 127))


@triton.jit
def _load_tile(x_ptr, item, items, chunks: tl.constexpr, K, stride_x, BLOCK: tl.constexpr, GROUPS: tl.constexpr):
    """Work item ``item`` (row item // chunks, GROUPS blocks from (item % chunks) GROUPS) in x's
    dtype; an item past the last (a prefetch beyond the end) loads nothing."""
    row = tl.cast(item // chunks, tl.int64)
    blocks = (item % chunks) * GROUPS + tl.arange(0, GROUPS)
    columns = blocks[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
    limit = tl.where(item < items, K, 0)
    return tl.load(x_ptr + row * stride_x + columns, mask=columns < limit, other=0.0)


@triton.jit
def _quantize_blocks_kernel(
    x_ptr, codes_ptr, scale_ptr, global_scale_ptr, values_ptr, K, stride_x, items, chunks: tl.constexpr,
    NVFP4: tl.constexpr, BLOCK: tl.constexpr, GROUPS: tl.constexpr, PREFETCH: tl.constexpr, VALUES: tl.constexpr,
    HARDWARE_CAST: tl.constexpr = False, CODES: tl.constexpr = True,
):
    """Persistent: program p quantizes work items p, p + P, ... (GROUPS blocks of one row each);
    with PREFETCH the next item's load is in flight while the current one is quantized. CODES:
    write the packed codes (off for an operand written only as its BF16 values, with VALUES);
    HARDWARE_CAST: NVFP4's block scales by the FP8 conversion instructions (``_nvfp4_scale``)."""
    first = tl.program_id(0)
    step = tl.num_programs(0)
    tensor_scale = 1.0
    if NVFP4:
        tensor_scale = tl.load(global_scale_ptr)
    if PREFETCH:
        upcoming = _load_tile(x_ptr, first, items, chunks, K, stride_x, BLOCK, GROUPS)
    for item in range(first, items, step):
        if PREFETCH:
            raw = upcoming
            upcoming = _load_tile(x_ptr, item + step, items, chunks, K, stride_x, BLOCK, GROUPS)
        else:
            raw = _load_tile(x_ptr, item, items, chunks, K, stride_x, BLOCK, GROUPS)
        row = tl.cast(item // chunks, tl.int64)
        blocks = (item % chunks) * GROUPS + tl.arange(0, GROUPS)
        x = raw.to(tl.float32)
        amax = tl.reduce(tl.abs(x), 1, _max_keeping_nan)  # NaN if the block holds a NaN
        amax = tl.where(amax == float("inf"), float("nan"), amax)  # a block holding Inf: NaN too
        block_mask = blocks < K // BLOCK
        if NVFP4:
            byte, block_value, scale = _nvfp4_scale(amax, tensor_scale, HARDWARE_CAST)
        else:
            byte, scale = _mxfp4_scale(amax)
            block_value = scale  # MXFP4's scale is its 2^e (NaN for 0xFF)
        tl.store(scale_ptr + row * (K // BLOCK) + blocks, byte.to(tl.uint8), mask=block_mask)
        if NVFP4:
            multiplier = tl.where(scale == 0, 0.0, tl.math.div_rn(1.0, scale))  # ``quantize.encode_multiplier``
        else:  # 1 / 2^e is the power of two 2^-e, exactly what the division gives (NaN for 0xFF), without it
            multiplier = tl.where(byte == 0xFF, float("nan"), _power_of_two(127 - byte))
        value, code = _e2m1_round(x * multiplier[:, None])
        if CODES:
            low, high = tl.split(tl.reshape(code.to(tl.uint8), (GROUPS, BLOCK // 2, 2)))
            pairs = blocks[:, None] * (BLOCK // 2) + tl.arange(0, BLOCK // 2)[None, :]
            tl.store(codes_ptr + row * (K // 2) + pairs, low | (high << 4), mask=pairs < K // 2)
        if VALUES:  # the block GEMM's BF16 operand: E2M1 value x block scale (no tensor scale), exact
            columns = blocks[:, None] * BLOCK + tl.arange(0, BLOCK)[None, :]
            tl.store(values_ptr + row * K + columns, (value * block_value[:, None]).to(tl.bfloat16), mask=columns < K)


@triton.jit
def _partial_absmax_kernel(x_ptr, partial_ptr, numel, BLOCK: tl.constexpr):
    """max |x| over one BLOCK of the flattened tensor; NaN if the block holds a NaN (Inf is kept:
    the scale rule turns a non-finite amax into a NaN scale, as the reference)."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offsets, mask=offsets < numel, other=0.0).to(tl.float32)
    tl.store(partial_ptr + tl.program_id(0), tl.reduce(tl.abs(x), 0, _max_keeping_nan))


def tensor_absmax(x: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """max |x| over a contiguous tensor (NaN if it holds a NaN): one read of x in bf16, partial
    maxima per block, then a small reduction (the reference's ``x.float().abs().amax()`` writes
    an fp32 copy first)."""
    if not x.is_contiguous():
        x = x.contiguous()
    return _partial_absmax(x, block).amax()


def _partial_absmax(x: torch.Tensor, block: int = 8192) -> torch.Tensor:
    if not x.is_contiguous():
        x = x.contiguous()
    partial = torch.empty(triton.cdiv(x.numel(), block), dtype=torch.float32, device=x.device)
    _partial_absmax_kernel[(partial.numel(),)](x, partial, x.numel(), BLOCK=block, num_warps=8)
    return partial


def supports_block_spec(spec: QuantSpec) -> bool:
    return spec in BLOCK_SPECS.values()


def quantize_blocks(
    x: torch.Tensor,
    spec: QuantSpec,
    blocks_per_program: int | None = None,
    prefetch: bool | None = None,
    programs_per_sm: int | None = None,
    values: bool = False,
    global_scale: torch.Tensor | None = None,
    codes: bool = True,
) -> QuantizedTensor:
    """NVFP4 or MXFP4 quantization of ``x`` [..., K] (K a multiple of the block size);
    blocks_per_program: a power of two, the blocks of one row in one work item of the persistent
    kernel; prefetch, programs_per_sm: its pipelining and grid (speed only; NOTES.md). values: also
    write the operand's BF16 values [rows, K] (``QuantizedTensor.bf16``, what the block GEMM would
    decode the codes into). global_scale: NVFP4's fp32 tensor scale of x found beforehand
    (``quantize_nvfp4.tensor_scales_with_rht``: the same value), instead of this call's own pass.
    codes=False (with values): the BF16 values only, no packed codes (``QuantizedTensor.data``
    None): an operand its GEMM consumes at once and nothing keeps."""
    if not supports_block_spec(spec):
        raise ValueError(f"quantize_blocks: NVFP4/MXFP4 E2M1 specs only, got {spec.describe()}")
    if not (codes or values):
        raise ValueError("quantize_blocks: codes=False writes the BF16 values only, so it needs values=True")
    block = BLOCK_SIZES[spec.granularity]
    k = x.shape[-1]
    if k % block:
        raise ValueError(f"quantize_blocks: shape {tuple(x.shape)} has last dim {k}, not a multiple of the {spec.granularity} block size {block}")
    x2d = x.reshape(-1, k)
    if x2d.stride(-1) != 1:
        x2d = x2d.contiguous()
    rows = x2d.shape[0]
    packed = torch.empty(rows, k // 2, dtype=torch.uint8, device=x.device) if codes else None
    scale_bytes = torch.empty(rows, k // block, dtype=torch.uint8, device=x.device)
    nvfp4 = spec.granularity == "nvfp4"
    if global_scale is not None and (not nvfp4 or global_scale.dtype != torch.float32 or global_scale.numel() != 1 or global_scale.device != x.device):
        raise ValueError(f"quantize_blocks: global_scale is NVFP4's fp32 tensor scale, one value on {x.device}, got {global_scale.dtype} x {global_scale.numel()} for {spec.granularity}")
    if global_scale is not None:
        global_scale = global_scale.reshape(())
    elif nvfp4:  # absmax_scale(tensor_absmax(x2d), ...) in one launch after the partial maxima
        global_scale = tensor_scale_from_partials(_partial_absmax(x2d), spec.format.max_value * E4M3_MAX)
    preferred = blocks_per_program or BLOCKS_PER_PROGRAM[spec.granularity]
    groups = flat_items(rows, k // block, preferred)
    if x2d.is_contiguous() and groups >= min(preferred, 32):  # one run of blocks, items of `groups` blocks
        view, view_k, chunks = x2d.reshape(-1, groups * block), groups * block, 1
    else:  # items within rows (strided rows; or a block count with few factors of two): the last item of a row masked
        groups = min(preferred, triton.next_power_of_2(k // block))
        view, view_k, chunks = x2d, k, triton.cdiv(k // block, groups)
    items = view.shape[0] * chunks
    bf16 = torch.empty(rows, k, dtype=torch.bfloat16, device=x.device) if values else None
    _quantize_blocks_kernel[(persistent_grid(items, x.device, programs_per_sm),)](
        view, packed if codes else bf16, scale_bytes, global_scale if nvfp4 else scale_bytes, bf16 if values else packed, view_k, view.stride(0), items, chunks,
        NVFP4=nvfp4, BLOCK=block, GROUPS=groups, PREFETCH=PREFETCH if prefetch is None else prefetch, VALUES=values,
        HARDWARE_CAST=hardware_block_scales(), CODES=codes, num_warps=4,
    )
    scale = scale_bytes.view(torch.float8_e4m3fn) if nvfp4 else scale_bytes
    return QuantizedTensor(packed, scale, global_scale, spec, x.shape, x.dtype, bf16=bf16)
