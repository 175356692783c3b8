"""What OCC costs next to the FP4 GEMM it serves, step by step, on an LLM-like activation.

    python benchmarks/bench_occ.py [--tokens 8192] [--k 4096] [--n 12288]

Times, in one run: the FP4 forward GEMM (hopper backend, the thing OCC is an add-on to); OCC's
thresholds (sampled quantiles), the outlier extraction (mask + nonzero + values), and the two
residual products (forward ΔX·W^T and weight-gradient dY^T·ΔX) with each product method: gathered
columns (when outliers sit in few channels), dense hi/lo bf16 GEMMs, CSR and COO sparse. Also for an activation whose
outliers sit in a few channels only. Ratios are to the FP4 forward GEMM.
"""

from __future__ import annotations

import argparse

import torch
from triton.testing import do_bench

from bench_linear import llm_like_activation
from megatron_fp4.gemm import get_backend
from megatron_fp4.kernels import quantize_fast
from megatron_fp4.occ import OCCConfig, SparseResidual, occ_bounds, occ_residual
from megatron_fp4.quantize import QuantSpec

ROW = QuantSpec("fp4", "row")


def ms(fn) -> float:
    return do_bench(fn, return_mode="median")


def channel_outlier_activation(tokens: int, k: int) -> torch.Tensor:
    x = torch.randn(tokens, k, device="cuda")
    x[:, torch.randperm(k, device="cuda")[: k // 64]] *= 40  # 1/64 of channels carry the outliers
    return x.to(torch.bfloat16)


def report(name: str, x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor) -> None:
    config = OCCConfig()
    xq, wq = quantize_fast(x, ROW), quantize_fast(w, ROW)
    gemm = ms(lambda: get_backend().fprop(xq, wq))
    bounds = occ_bounds(x, config)
    residual = occ_residual(x, *bounds)
    columns = residual.columns.unique().numel()
    print(f"== {name}: {x.shape[0]}x{x.shape[1]} @ N={w.shape[0]}; clamped {residual.nnz / x.numel():.2%} of entries, "
          f"in {columns / x.shape[1]:.1%} of the columns; FP4 forward GEMM {gemm:.3f} ms")
    rows = [("thresholds (sampled quantiles)", ms(lambda: occ_bounds(x, config))),
            ("outlier extraction", ms(lambda: occ_residual(x, *bounds)))]
    for method in ("gather", "dense", "csr", "coo"):
        if method == "gather" and columns > SparseResidual.dense_column_fraction * x.shape[1]:
            continue
        saved = (SparseResidual.dense_column_fraction, SparseResidual.sparse_format)
        SparseResidual.dense_column_fraction = 1.0 if method == "gather" else -1.0
        SparseResidual.sparse_format = method if method != "gather" else saved[1]
        rows.append((f"ΔX·W^T ({method})", ms(lambda: residual.matmul_weight_t(w))))
        rows.append((f"dY^T·ΔX ({method})", ms(lambda: residual.t_matmul(grad))))
        SparseResidual.dense_column_fraction, SparseResidual.sparse_format = saved
    for label, time in rows:
        print(f"  {label:<34} {time:8.3f} ms  {time / gemm:6.2f}x the FP4 GEMM")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--k", type=int, default=4096)
    parser.add_argument("--n", type=int, default=12288)
    args = parser.parse_args()
    w = torch.randn(args.n, args.k, device="cuda", dtype=torch.bfloat16) * 0.02
    grad = torch.randn(args.tokens, args.n, device="cuda", dtype=torch.bfloat16)
    report("LLM-like activation (heavy tails everywhere)", llm_like_activation(args.tokens, args.k), w, grad)
    report("channel outliers only", channel_outlier_activation(args.tokens, args.k), w, grad)


if __name__ == "__main__":
    main()
