"""Session 14: instruction-count variants of the delayed grad quantizer's pass (sm90 SASS per thread,
64x128 tile, 4 warps: production 1200; fold and encode multiplies merged, g * (c * inv), 1072; and
no masks for tile-multiple shapes, 1040; without maxima 856), in CUDA-graph replay against the
production pass (share of copy, bench_quant's bytes). The merged form changes the arithmetic
(fl(g fl(c inv)) against fl(fl(g c) inv)), so only the timing is compared here. (Call 3 and 4's
form passed the FP8 layout to ``fp8_cast`` as literals, not constexprs: the "production arithmetic
here" column then ran at 0.59 against production's 0.75 with the same source; call 5 passes them
as constexprs, as the package does.)"""
import sys

import torch

sys.path.insert(0, "benchmarks")
import bench_quant as b  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from megatron_fp4.kernels import quantize_grad as q  # noqa: E402
from megatron_fp4.kernels.fp8_rounding import fp8_cast  # noqa: E402

@triton.jit
def var_kernel(g_ptr, column_scale_ptr, row_scale_ptr, dgrad_ptr, wgrad_t_ptr, state_ptr, M, N, stride_g,
               BM: tl.constexpr, BN: tl.constexpr, EVEN: tl.constexpr, MERGED: tl.constexpr, TRANSPOSE_F32: tl.constexpr, MAXIMA: tl.constexpr, SPREAD: tl.constexpr,
               MANTISSA: tl.constexpr, BIAS: tl.constexpr, E4M3FN: tl.constexpr, HARDWARE_CAST: tl.constexpr):
    d_inverse = tl.math.div_rn(1.0, q._amax_scale(q._history_limit(state_ptr, 0, 2.0), 57344.0))
    w_inverse = tl.math.div_rn(1.0, q._amax_scale(q._history_limit(state_ptr, 1, 2.0), 57344.0))
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    offs = rows[:, None].to(tl.int64) * stride_g + cols[None, :]
    if EVEN:
        g = tl.load(g_ptr + offs).to(tl.float32)
        column_scale = tl.load(column_scale_ptr + cols)
        row_scale = tl.load(row_scale_ptr + rows)
    else:
        mask = (rows[:, None] < M) & (cols[None, :] < N)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        column_scale = tl.load(column_scale_ptr + cols, mask=cols < N, other=1.0)
        row_scale = tl.load(row_scale_ptr + rows, mask=rows < M, other=1.0)
    if MERGED:  # maxima and cast on the encoded values g * (c * inv)
        dgrad = g * (column_scale * d_inverse)[None, :]
        wgrad = g * (row_scale * w_inverse)[:, None]
    else:  # production: maxima on the folded values g * c, cast of (g * c) * inv
        dgrad = g * column_scale[None, :]
        wgrad = g * row_scale[:, None]
    if MAXIMA:
        running = state_ptr.to(tl.pointer_type(tl.int32)) + 2
        if SPREAD == 1:  # 64 addresses, 128 bytes apart
            running = running + (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) % 64 * 32
        if SPREAD == 2:  # one slot per program, plain stores
            slot = running + (tl.program_id(0) * tl.num_programs(1) + tl.program_id(1)) * 2
            tl.store(slot, q._tile_absmax(dgrad).to(tl.int32, bitcast=True))
            tl.store(slot + 1, q._tile_absmax(wgrad).to(tl.int32, bitcast=True))
        else:
            tl.atomic_max(running, q._tile_absmax(dgrad).to(tl.int32, bitcast=True), sem="relaxed")
            tl.atomic_max(running + 1, q._tile_absmax(wgrad).to(tl.int32, bitcast=True), sem="relaxed")
    if not MERGED:
        dgrad = dgrad * d_inverse
        wgrad = wgrad * w_inverse
    dgrad_byte = fp8_cast(dgrad, MANTISSA, BIAS, E4M3FN, HARDWARE_CAST).to(tl.uint8)
    if EVEN:
        tl.store(dgrad_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], dgrad_byte)
    else:
        tl.store(dgrad_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], dgrad_byte, mask=mask)
    if TRANSPOSE_F32:
        wgrad_byte_t = fp8_cast(tl.trans(wgrad), MANTISSA, BIAS, E4M3FN, HARDWARE_CAST).to(tl.uint8)
    else:
        wgrad_byte_t = tl.trans(fp8_cast(wgrad, MANTISSA, BIAS, E4M3FN, HARDWARE_CAST).to(tl.uint8))
    transposed = cols[:, None].to(tl.int64) * M + rows[None, :]
    if EVEN:
        tl.store(wgrad_t_ptr + transposed, wgrad_byte_t)
    else:
        tl.store(wgrad_t_ptr + transposed, wgrad_byte_t, mask=(cols[:, None] < N) & (rows[None, :] < M))


b.GRAPH = True
print("| shape | production pass | merged | merged, no masks | merged, no masks, no maxima | unmerged (production arithmetic) here | merged, 64 atomic addresses | merged, per-program stores | production pass, timed last |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for rows, k in ((8192, 4096), (16384, 5120), (8192, 11008), (16384, 13824)):
    copy = rows * k * 4 / b.median_ms(torch.randn(rows, k, device="cuda", dtype=torch.bfloat16).clone) / 1e6
    x, _, column_scale, row_scale = b._inputs(rows, k)[:4]
    grid = (triton.cdiv(rows, q.BLOCK_M), triton.cdiv(k, q.BLOCK_N))
    state = torch.zeros(8 + 2 * 4096 * 64, device="cuda")
    state[0:2] = 1e6
    scales = torch.ones(8, device="cuda")
    dgrad, wgrad_t = torch.empty(rows, k, dtype=torch.uint8, device="cuda"), torch.empty(k, rows, dtype=torch.uint8, device="cuda")
    layout = dict(D_MANTISSA=2, D_BIAS=15, D_E4M3FN=False, W_MANTISSA=2, W_BIAS=15, W_E4M3FN=False, BM=q.BLOCK_M, BN=q.BLOCK_N,
                  num_warps=q.NUM_WARPS, HARDWARE_CAST=True, D_MAX=57344.0, W_MAX=57344.0, MARGIN_FACTOR=2.0)
    runs = [lambda: q._folded_quantize_kernel[grid](x, column_scale, row_scale, scales[0:1], scales[4:5], dgrad, wgrad_t, state, rows, k, k, DELAYED=True, **layout)]
    for even, maxima, merged, spread in ((False, True, True, 0), (True, True, True, 0), (True, False, True, 0), (False, True, False, 0), (False, True, True, 1), (False, True, True, 2)):
        runs.append(lambda even=even, maxima=maxima, merged=merged, spread=spread: var_kernel[grid](
            x, column_scale, row_scale, dgrad, wgrad_t, state, rows, k, k, BM=q.BLOCK_M, BN=q.BLOCK_N,
            EVEN=even, MERGED=merged, TRANSPOSE_F32=False, MAXIMA=maxima, SPREAD=spread, MANTISSA=2, BIAS=15, E4M3FN=False, HARDWARE_CAST=True, num_warps=q.NUM_WARPS))
    runs.append(runs[0])  # the production pass again, after the variants: does the order matter?
    shares = [rows * k * 4 / b.median_ms(run) / 1e6 / copy for run in runs]
    print(f"| {rows}x{k} | " + " | ".join(f"{s:.2f}" for s in shares) + " |", flush=True)
    b._inputs.cache_clear()
    torch.cuda.empty_cache()
