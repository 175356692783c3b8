"""Linear-layer forward+backward at LLaMA-2 shapes: our FP4 recipes vs nn.Linear bf16, one run.

    python benchmarks/bench_linear.py [--tokens 8192 16384] [--recipes paper paper-no-occ direct nvfp4]

Per shape, all in the same run: bf16 ``nn.Linear`` fwd+bwd (the baseline); the FP8 row-wise
``_scaled_mm`` ceiling (the three GEMMs of fwd+bwd as bare FP8 GEMMs: no quantization, no
OCC); and each FP4 recipe's linear fwd+bwd on the automatic backend. Medians of
``triton.testing.do_bench``; ratio = bf16 time / time (higher is faster). ``--graph`` times
CUDA-graph replays of each fwd+bwd instead (BF16's too): the kernels without the host time an eager
call adds, as the graphed trainer runs them.

The input is an LLM-like activation (heavy-tailed tokens, log-normal channel magnitudes, a few
outlier channels: what OCC is for), generated on the GPU. The last columns give the bytes the
`paper` linear keeps for backward per activation element (packed codes + scales + OCC
residual) against a bf16 copy's 2 B, and the share of entries OCC clamped.
"""

from __future__ import annotations

import argparse

import torch
from triton.testing import do_bench

from megatron_fp4.gemm import get_backend
from megatron_fp4.linear import FP4GemmState, fp4_linear
from megatron_fp4.occ import occ_bounds
from megatron_fp4.recipe import get_recipe

# (model, layer, in_features, out_features) for LLaMA-2 1.3B, 7B and 13B
SHAPES = [
    ("1.3B", "qkv", 2048, 3 * 2048), ("1.3B", "fc1", 2048, 2 * 5504), ("1.3B", "fc2", 5504, 2048),
    ("7B", "qkv", 4096, 3 * 4096), ("7B", "fc1", 4096, 2 * 11008), ("7B", "fc2", 11008, 4096),
    ("13B", "qkv", 5120, 3 * 5120), ("13B", "fc1", 5120, 2 * 13824), ("13B", "fc2", 13824, 5120),
]
VARIANTS = {
    "paper": lambda: get_recipe("paper"),
    "paper-no-occ": lambda: get_recipe("paper", occ=get_recipe("paper").occ.__class__(enabled=False)),
    "paper-hot": lambda: get_recipe("paper", occ=get_recipe("paper").occ.__class__(compensation="hot_channels")),
    "paper-fp8": lambda: get_recipe("paper", occ=get_recipe("paper").occ.__class__(compensation="fp8")),
    "paper-exact": lambda: get_recipe("paper", occ=get_recipe("paper").occ.__class__(compensation="exact")),
    "paper-fwd-occ": lambda: get_recipe("paper", occ=get_recipe("paper").occ.__class__(compensation="fp8", compensate_wgrad=False)),
    "paper-inline": lambda: get_recipe("paper", occ=get_recipe("paper").occ.__class__(compensation="inline")),
    "direct": lambda: get_recipe("direct"),
    "nvfp4": lambda: get_recipe("nvfp4"),
    "mxfp4": lambda: get_recipe("mxfp4"),
}


def llm_like_activation(tokens: int, hidden: int) -> torch.Tensor:
    """Student-t(3) tokens x log-normal channel scales, 1/256 of channels 4-8x larger (bf16)."""
    normal = torch.randn(4, tokens, hidden, device="cuda")
    student_t = normal[0] / (normal[1:].square().sum(0) / 3).sqrt()
    channel = torch.exp(0.5 * torch.randn(hidden, device="cuda"))
    outliers = torch.randperm(hidden, device="cuda")[: max(1, hidden // 256)]
    channel[outliers] *= 4 + 4 * torch.rand(outliers.numel(), device="cuda")
    return (student_t / student_t.std() * channel).to(torch.bfloat16)


GRAPH = False  # --graph: time CUDA-graph replays of fwd+bwd (the kernels without host time)


def fwd_bwd_ms(fn, x, w, grad) -> float:
    def run():
        x.grad = w.grad = None
        fn(x, w).backward(grad)

    if not GRAPH:
        return do_bench(run, return_mode="median")
    # captured after a warm-up on a side stream (the kernels compiled, the allocator's pools made);
    # the replay writes x.grad / w.grad in place, so the graph holds them from the capture on
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    x.grad = w.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn(x, w).backward(grad)
    try:
        return do_bench(graph.replay, return_mode="median")
    finally:
        x.grad = w.grad = None
        del graph


def fp8_ceiling_ms(tokens: int, k: int, n: int) -> float:
    a = torch.randn(tokens, k, device="cuda").to(torch.float8_e4m3fn)
    b = torch.randn(n, k, device="cuda").to(torch.float8_e4m3fn)
    g = torch.randn(tokens, n, device="cuda").to(torch.float8_e4m3fn)
    gt, at, bt = g.t().contiguous(), a.t().contiguous(), b.t().contiguous()
    ones = lambda r, c: torch.ones(r, c, device="cuda")  # noqa: E731

    def run():
        torch._scaled_mm(a, b.t(), scale_a=ones(tokens, 1), scale_b=ones(1, n), out_dtype=torch.bfloat16)  # fprop
        torch._scaled_mm(g, bt.t(), scale_a=ones(tokens, 1), scale_b=ones(1, k), out_dtype=torch.bfloat16)  # dgrad
        torch._scaled_mm(gt, at.t(), scale_a=ones(n, 1), scale_b=ones(1, k), out_dtype=torch.bfloat16)  # wgrad

    return do_bench(run, return_mode="median")


def saved_bytes_per_element(x: torch.Tensor, w: torch.Tensor) -> tuple[float, float]:
    """(bytes kept for backward per activation element, OCC clamped share) of the `paper` linear."""
    recipe = get_recipe("paper")
    state = FP4GemmState(recipe, get_backend())
    state.forward(x, w)
    residual = state.residual.nbytes if state.residual is not None else 0
    low, high = occ_bounds(x, recipe.occ)
    return (state.x_saved.nbytes + residual) / x.numel(), float(((x > high) | (x < low)).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192])
    parser.add_argument("--recipes", nargs="+", default=["paper", "paper-no-occ", "direct", "nvfp4"], choices=sorted(VARIANTS))
    parser.add_argument("--models", nargs="+", default=["1.3B", "7B", "13B"], choices=["1.3B", "7B", "13B"])
    parser.add_argument("--graph", action="store_true", help="time CUDA-graph replays of each fwd+bwd, BF16's too (no host time: the graphed trainer's case)")
    args = parser.parse_args()
    global GRAPH
    GRAPH = args.graph
    print(f"FP4 GEMM backend: {get_backend().name}; ratio = bf16 time / time (higher is faster){'; CUDA-graph replays' if GRAPH else ''}")
    print(
        f"{'tokens':>6} {'model':>5} {'layer':>5} {'K':>6} {'N':>6} {'bf16 ms':>8} {'fp8 ceil':>9}"
        + "".join(f" {r:>13}" for r in args.recipes)
        + f" {'saved B/elem':>13} {'vs bf16':>8} {'clamped':>8}"
    )
    for tokens in args.tokens:
        for model, layer, k, n in SHAPES:
            if model not in args.models:
                continue
            x = llm_like_activation(tokens, k).requires_grad_()
            w = (torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02).requires_grad_()
            grad = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16) * 1e-3
            bf16 = fwd_bwd_ms(torch.nn.functional.linear, x, w, grad)
            ratios = [bf16 / fp8_ceiling_ms(tokens, k, n)]
            for name in args.recipes:
                recipe = VARIANTS[name]()
                ratios.append(bf16 / fwd_bwd_ms(lambda a, b, recipe=recipe: fp4_linear(a, b, None, recipe), x, w, grad))
            saved, clamped = saved_bytes_per_element(x.detach(), w.detach())
            print(
                f"{tokens:>6} {model:>5} {layer:>5} {k:>6} {n:>6} {bf16:>8.3f} {ratios[0]:>8.2f}x"
                + "".join(f" {r:>12.2f}x" for r in ratios[1:])
                + f" {saved:>13.3f} {saved / 2:>7.2f}x {clamped:>8.2%}"
            )
            del x, w, grad
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
