"""Where the time of one FP4 linear fwd+bwd goes: the top CUDA kernels under torch.profiler.

    python benchmarks/profile_linear.py [--recipe paper] [--tokens 8192] [--k 4096] [--n 12288]

Prints the kernels by total device time next to bf16 ``nn.Linear`` profiled the same way, so the
cost of each quantizer, OCC step and GEMM can be read against the GEMMs it feeds.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench_linear import VARIANTS, llm_like_activation
from megatron_fp4.linear import fp4_linear


def profile_table(fn, x, w, grad, rows: int) -> str:
    for _ in range(3):  # warm up (compiles the kernels)
        fn(x, w).backward(grad)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            x.grad = w.grad = None
            fn(x, w).backward(grad)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="paper", choices=sorted(VARIANTS))
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=12288)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    x = llm_like_activation(args.tokens, args.k).requires_grad_()
    w = (torch.randn(args.n, args.k, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
    grad = torch.randn(args.tokens, args.n, device="cuda", dtype=torch.bfloat16) * 1e-3
    recipe = VARIANTS[args.recipe]()
    print(f"== bf16 nn.Linear, {args.tokens} tokens, K={args.k}, N={args.n} (5 fwd+bwd)")
    print(profile_table(torch.nn.functional.linear, x, w, grad, 6))
    print(f"== FP4 {args.recipe}")
    print(profile_table(lambda a, b: fp4_linear(a, b, None, recipe), x, w, grad, args.rows))


if __name__ == "__main__":
    main()
