"""Host time per linear fwd+bwd: what the CPU spends launching one FP4 linear, against nn.Linear.

    python benchmarks/bench_host.py [--recipes paper paper-no-occ direct nvfp4] [--shape 256 256 256]

At a tiny shape the GPU finishes each kernel faster than Python can launch the next, so the wall
time of many back-to-back fwd+bwd calls (no synchronisation inside the loop) is the host time:
Python, autograd, allocations, and the launch of every kernel. Printed per recipe, in the same
run as BF16 ``nn.Linear``: host microseconds per fwd+bwd, CUDA kernels launched per fwd+bwd
(profiler count) and host-to-device synchronisations seen (a CUDA-graph capture attempt, in a
subprocess-free way: ``torch.cuda.set_sync_debug_mode("warn")`` counts them). A layer whose GPU
work is shorter than its host time leaves the GPU idle: what issue 14 item 3 asks to remove.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from torch.profiler import ProfilerActivity, profile

from bench_linear import VARIANTS
from megatron_fp4.linear import fp4_linear


def host_microseconds(fn, x, w, grad, calls: int) -> float:
    for _ in range(5):  # warm up: compile kernels, fill the allocator's cache
        fn(x, w).backward(grad)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        x.grad = w.grad = None
        fn(x, w).backward(grad)
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    return host / calls * 1e6


def kernels_per_call(fn, x, w, grad) -> int:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn(x, w).backward(grad)
        torch.cuda.synchronize()
    return sum(1 for event in prof.events() if event.device_type == torch.autograd.DeviceType.CUDA)


def synchronisations(fn, x, w, grad) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(x, w).backward(grad)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["paper", "paper-no-occ", "direct", "nvfp4"], choices=sorted(VARIANTS))
    parser.add_argument("--shape", type=int, nargs=3, default=[256, 256, 256], metavar=("TOKENS", "K", "N"))
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--cprofile", metavar="RECIPE", choices=sorted(VARIANTS),
                        help="also print where the host time of RECIPE goes (cProfile, top functions by own time)")
    parser.add_argument("--cprofile-rows", type=int, default=35)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_host needs a CUDA GPU")
    tokens, k, n = args.shape
    x = torch.randn(tokens, k, device="cuda", dtype=torch.bfloat16).requires_grad_()
    w = (torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.05).requires_grad_()
    grad = torch.randn(tokens, n, device="cuda", dtype=torch.bfloat16)
    runs = {"bf16 nn.Linear": torch.nn.functional.linear}
    runs.update({name: (lambda a, b, recipe=VARIANTS[name](): fp4_linear(a, b, None, recipe)) for name in args.recipes})
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; linear {tokens}x{k} -> {n}, {args.calls} calls, same run")
    print("| linear | host µs per fwd+bwd | vs BF16 | CUDA kernels per fwd+bwd | host syncs per fwd+bwd |")
    print("| --- | --- | --- | --- | --- |")
    baseline = None
    for name, fn in runs.items():
        microseconds = host_microseconds(fn, x, w, grad, args.calls)
        baseline = baseline or microseconds
        print(f"| {name} | {microseconds:.0f} | {microseconds / baseline:.1f}x | {kernels_per_call(fn, x, w, grad)} | {synchronisations(fn, x, w, grad)} |", flush=True)
    if args.cprofile:
        print_host_profile(runs.get(args.cprofile) or (lambda a, b, recipe=VARIANTS[args.cprofile](): fp4_linear(a, b, None, recipe)),
                           x, w, grad, args.calls, args.cprofile_rows)


def print_host_profile(fn, x, w, grad, calls: int, rows: int) -> None:
    """cProfile of ``calls`` fwd+bwd: the Python functions the host time is spent in."""
    import cProfile
    import pstats

    fn(x, w).backward(grad)
    torch.cuda.synchronize()
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        x.grad = w.grad = None
        fn(x, w).backward(grad)
    profiler.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(profiler).strip_dirs()
    stats.sort_stats("tottime").print_stats(rows)
    stats.sort_stats("cumulative").print_stats(rows)


if __name__ == "__main__":
    main()
