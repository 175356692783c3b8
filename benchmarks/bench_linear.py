"""Linear-layer forward+backward at LLaMA-2 shapes: our FP4 recipes vs nn.Linear bf16, one run.

    python benchmarks/bench_linear.py [--tokens 8192]

Rows per shape: bf16 nn.Linear fwd+bwd (the baseline, ratio 1.00); the FP8 row-wise
``_scaled_mm`` ceiling (the three GEMMs of fwd+bwd as FP8 GEMMs, no quantization cost);
`direct` and `paper` FP4 linears fwd+bwd with the current backend. Medians of
``triton.testing.do_bench``; ratios are bf16 time / row time (higher is faster).
"""

from __future__ import annotations

import argparse
import os

import torch
from triton.testing import do_bench

from megatron_fp4.linear import fp4_linear
from megatron_fp4.recipe import get_recipe

# (model, layer, in_features, out_features) for LLaMA-2 1.3B-style, 7B and 13B
SHAPES = [
    ("1.3B", "qkv", 2048, 3 * 2048), ("1.3B", "fc1", 2048, 2 * 5504), ("1.3B", "fc2", 5504, 2048),
    ("7B", "qkv", 4096, 3 * 4096), ("7B", "fc1", 4096, 2 * 11008), ("7B", "fc2", 11008, 4096),
    ("13B", "qkv", 5120, 3 * 5120), ("13B", "fc1", 5120, 2 * 13824), ("13B", "fc2", 13824, 5120),
]


def fwd_bwd(fn, x, w, grad):
    def run():
        x.grad = w.grad = None
        fn(x, w).backward(grad)

    return do_bench(run, return_mode="median")


def fp8_ceiling(tokens, k, n):
    a = torch.randn(tokens, k, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
    g = torch.randn(tokens, n, device="cuda").to(torch.float8_e4m3fn)
    gt = g.t().contiguous()
    at = a.t().contiguous()
    bt = b.t().contiguous()
    ones = lambda r, c: torch.ones(r, c, device="cuda")  # noqa: E731

    def run():
        torch._scaled_mm(a, b.t(), scale_a=ones(tokens, 1), scale_b=ones(1, n), out_dtype=torch.bfloat16)  # fprop
        torch._scaled_mm(g, bt.t(), scale_a=ones(tokens, 1), scale_b=ones(1, k), out_dtype=torch.bfloat16)  # dgrad
        torch._scaled_mm(gt, at.t(), scale_a=ones(n, 1), scale_b=ones(1, k), out_dtype=torch.bfloat16)  # wgrad

    return do_bench(run, return_mode="median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--recipes", nargs="+", default=["direct", "paper"])
    args = parser.parse_args()
    backend = os.environ.get("MEGATRON_FP4_GEMM_BACKEND", "auto")
    print(f"tokens {args.tokens}; FP4 GEMM backend {backend}; ratio = bf16 time / time")
    header = f"{'model':>5} {'layer':>5} {'K':>6} {'N':>6} {'bf16 ms':>8} {'fp8 ceil':>8}" + "".join(f" {r:>8}" for r in args.recipes)
    print(header)
    for model, layer, k, n in SHAPES:
        x = torch.randn(args.tokens, k, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        w = (torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
        grad = torch.randn(args.tokens, n, device="cuda", dtype=torch.bfloat16)
        bf16 = fwd_bwd(lambda a, b: torch.nn.functional.linear(a, b), x, w, grad)
        ratios = [bf16 / fp8_ceiling(args.tokens, k, n)]
        for name in args.recipes:
            recipe = get_recipe(name)
            ratios.append(bf16 / fwd_bwd(lambda a, b: fp4_linear(a, b, None, recipe, backend), x, w, grad))
        print(f"{model:>5} {layer:>5} {k:>6} {n:>6} {bf16:>8.3f}" + "".join(f" {r:>7.2f}x" for r in ratios))
        del x, w, grad
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
