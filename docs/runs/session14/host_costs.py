"""Session 14: the host cost of each kind of thing an eager FP4 linear does, on the device.

Each row: the wall time of N back-to-back calls of one operation on tiny tensors (GPU work far
shorter than the launch), divided by N: what the host pays per call. Then torch.profiler's CPU
table for one FP4 linear fwd+bwd (paper, 1.3B qkv shape): where its host time goes by op.
"""
import sys
import time

import torch
import triton
import triton.language as tl

sys.path.insert(0, "benchmarks")


@triton.jit
def _noop(x_ptr, n):
    pass


@triton.jit
def _many_args(a, b, c, d, e, f, g, h, M, N, stride, K: tl.constexpr, R: tl.constexpr, BLOCK: tl.constexpr, X: tl.constexpr, Y: tl.constexpr):
    pass


def per_call_us(fn, calls=2000):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def main():
    from megatron_fp4.kernels.quantize_rows import quantize_rows
    from megatron_fp4.occ import OCCConfig, occ_bounds, occ_thresholds

    d = "cuda"
    x = torch.randn(256, 256, device=d, dtype=torch.bfloat16)
    f8 = x.to(torch.float8_e4m3fn)
    s = torch.ones(256, 1, device=d)
    big = torch.randn(8192, 2048, device=d, dtype=torch.bfloat16)
    cfg = OCCConfig()
    p = [torch.empty(16, device=d) for _ in range(8)]
    rows = {
        "empty Triton kernel, 2 args": lambda: _noop[(1,)](x, 1),
        "empty Triton kernel, 11 args + 5 constexprs": lambda: _many_args[(1,)](*p, 1, 2, 3, K=4096, R=1, BLOCK=4096, X=True, Y=False),
        "torch.empty": lambda: torch.empty(256, 256, device=d),
        "torch.zeros": lambda: torch.zeros(769, dtype=torch.int32, device=d),
        "x.float() (a cast kernel)": lambda: x.float(),
        "x * 2 (elementwise)": lambda: x * 2,
        "x.reshape(-1) (view)": lambda: x.reshape(-1),
        "torch._scaled_mm rowwise 256^3": lambda: torch._scaled_mm(f8, f8.t(), scale_a=s, scale_b=s.t(), out_dtype=torch.bfloat16),
        "torch.mm bf16 256^3": lambda: torch.mm(x, x),
        "quantize_rows (row FP4 operand)": lambda: quantize_rows(x),
        "occ_bounds, sort (reference, 8192x2048 sample)": lambda: tuple(t.to(torch.bfloat16) for t in occ_thresholds(big, cfg)),
        "occ_bounds, order-statistics kernels (8192x2048 sample)": lambda: occ_bounds(big, cfg),
    }
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}")
    print("| operation | host µs per call |")
    print("| --- | --- |")
    for name, fn in rows.items():
        print(f"| {name} | {per_call_us(fn, 500 if 'occ' in name else 2000):.1f} |", flush=True)

    from bench_linear import VARIANTS
    from megatron_fp4.linear import fp4_linear
    from torch.profiler import ProfilerActivity, profile

    for recipe_name in ("paper", "direct"):
        recipe = VARIANTS[recipe_name]()
        xa = torch.randn(8192, 2048, device=d, dtype=torch.bfloat16).requires_grad_()
        w = (torch.randn(6144, 2048, device=d, dtype=torch.bfloat16) * 0.05).requires_grad_()
        g = torch.randn(8192, 6144, device=d, dtype=torch.bfloat16)
        for _ in range(3):
            fp4_linear(xa, w, None, recipe).backward(g)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(10):
                xa.grad = w.grad = None
                fp4_linear(xa, w, None, recipe).backward(g)
            torch.cuda.synchronize()
        print(f"\n## {recipe_name}: torch.profiler CPU ops, 10 fwd+bwd at 8192x2048 -> 6144 (self CPU time)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=60))


if __name__ == "__main__":
    main()
