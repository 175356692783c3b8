"""Session 15 diagnostic: what limits the along-the-tokens MXFP4 quantizer (0.35 of copy at 22
SASS instructions per element, where the row-wise block kernel reaches 0.68 at 21.5)? Variants of
one kernel, timed in CUDA graphs at 8192x4096 against a copy (timing only: D2-D4 write wrong
layouts on purpose):
  D1  the package's form: load [tokens, cols], transpose in BF16, quantize, codes and scales to O = x^T
  D2  D1 without the scale stores
  D3  D1 with codes and scales stored contiguously per program (no strided narrow writes)
  D4  no transpose: blocks along the columns, contiguous stores (the row-wise kernel's work)
  G   D1 with the grid's fastest axis along the tokens (consecutive programs write adjacent bytes)
"""
import torch
import triton
import triton.language as tl
from triton.testing import do_bench_cudagraph

from megatron_fp4.kernels.quantize_blocks import _mxfp4_scale, _power_of_two
from megatron_fp4.kernels.quantize_rows import _e2m1_round, _max_keeping_nan


@triton.jit
def diag_kernel(x_ptr, codes_ptr, scale_ptr, M, N, stride_x, BT: tl.constexpr, BC: tl.constexpr, MODE: tl.constexpr, TOKENS_FAST: tl.constexpr):
    if TOKENS_FAST:
        t0 = tl.program_id(0) * BT
        c0 = tl.program_id(1) * BC
        pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    else:
        c0 = tl.program_id(0) * BC
        t0 = tl.program_id(1) * BT
        pid = tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tokens = t0 + tl.arange(0, BT)
    cols = c0 + tl.arange(0, BC)
    x = tl.load(x_ptr + tokens[:, None].to(tl.int64) * stride_x + cols[None, :])
    if MODE == 4:
        o = x.to(tl.float32)  # [BT, BC], blocks along cols (wrong semantics, same work)
        R: tl.constexpr = BT
        C: tl.constexpr = BC
    else:
        o = tl.trans(x).to(tl.float32)  # [BC, BT]
        R: tl.constexpr = BC
        C: tl.constexpr = BT
    amax = tl.reduce(tl.reshape(tl.abs(o), (R, C // 32, 32)), 2, _max_keeping_nan)
    byte, scale = _mxfp4_scale(tl.where(amax == float("inf"), float("nan"), amax))
    multiplier = tl.where(byte == 0xFF, float("nan"), _power_of_two(127 - byte))
    q = tl.reshape(tl.reshape(o, (R, C // 32, 32)) * multiplier[:, :, None], (R, C))
    _, code = _e2m1_round(q)
    low, high = tl.split(tl.reshape(code.to(tl.uint8), (R, C // 2, 2)))
    packed = low | (high << 4)
    r = tl.arange(0, R)
    if MODE == 1 or MODE == 2:
        half = t0 // 2 + tl.arange(0, C // 2)
        groups = t0 // 32 + tl.arange(0, C // 32)
        if MODE == 1:
            tl.store(scale_ptr + cols[:, None].to(tl.int64) * (M // 32) + groups[None, :], byte.to(tl.uint8))
        tl.store(codes_ptr + cols[:, None].to(tl.int64) * (M // 2) + half[None, :], packed)
    else:  # contiguous per program
        base = pid.to(tl.int64) * (R * C // 2)
        tl.store(codes_ptr + base + r[:, None] * (C // 2) + tl.arange(0, C // 2)[None, :], packed)
        tl.store(scale_ptr + pid.to(tl.int64) * (R * C // 32) + r[:, None] * (C // 32) + tl.arange(0, C // 32)[None, :], byte.to(tl.uint8))


def main():
    m, n = 8192, 4096
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    codes = torch.empty(n * m // 2, dtype=torch.uint8, device="cuda")
    scales = torch.empty(n * m // 32, dtype=torch.uint8, device="cuda")
    copy_ms = do_bench_cudagraph(x.clone, return_mode="median")
    copy_bw = m * n * 4 / copy_ms
    nbytes = m * n * (2 + 0.5 + 1 / 32)
    print(f"copy {copy_bw / 1e9:.1f} TB/s at {m}x{n}")  # bytes per ms / 1e9 (call 2 printed this as "GB/s")
    for bt, bc, warps in ((64, 64, 4), (32, 256, 4), (32, 128, 4), (64, 128, 4), (64, 256, 8), (128, 64, 4)):
        for mode, fast in ((1, False), (2, False), (3, False), (4, False), (1, True)):
            label = {1: "D1", 2: "D2", 3: "D3", 4: "D4"}[mode] + (" G" if fast else "")
            grid = (m // bt, n // bc) if fast else (n // bc, m // bt)
            fn = lambda: diag_kernel[grid](x, codes, scales, m, n, n, BT=bt, BC=bc, MODE=mode, TOKENS_FAST=fast, num_warps=warps)
            ms = do_bench_cudagraph(fn, return_mode="median")
            print(f"tokens {bt} x cols {bc} warps {warps} {label:5s}: {nbytes / ms / copy_bw:.2f} of copy", flush=True)


if __name__ == "__main__":
    main()
