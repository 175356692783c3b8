"""Block-scaled FP4 GEMM (NVFP4 / MXFP4 operands on BF16 tensor cores) against cuBLAS BF16, one run.

    python benchmarks/bench_block_gemm.py [--sweep] [--shapes 7B-qkv-fprop ...]

Per GEMM of a linear layer at LLaMA shapes (8192 tokens): cuBLAS ``torch.matmul`` on BF16
operands (the baseline), our kernel on BF16 operands (Triton's GEMM efficiency alone, no decode),
``fused`` (operands decoded in registers) and ``decoded`` (decode once, then the BF16 GEMM),
each tile configuration with ``--sweep``. ratio = cuBLAS time / time (higher is faster). Medians
of ``triton.testing.do_bench``. Every timed result is first checked against the reference GEMM.
"""

from __future__ import annotations

import argparse

import torch
from triton.testing import do_bench

from megatron_fp4.kernels import block_gemm
from megatron_fp4.kernels.block_gemm import GemmConfig, block_scaled_matmul
from megatron_fp4.quantize import QuantSpec, quantize

TOKENS = 8192
# name -> (M, N, K, A granularity, B granularity, B read transposed)
SHAPES = {
    "7B-qkv-fprop": (TOKENS, 12288, 4096, "nvfp4", "nvfp4_2d", False),
    "7B-qkv-dgrad": (TOKENS, 4096, 12288, "nvfp4", "nvfp4_2d", True),
    "7B-qkv-wgrad": (12288, 4096, TOKENS, "nvfp4", "nvfp4", False),
    "7B-fc2-fprop": (TOKENS, 4096, 11008, "nvfp4", "nvfp4_2d", False),
    "13B-fc1-fprop": (TOKENS, 27648, 5120, "nvfp4", "nvfp4_2d", False),
    "7B-qkv-fprop-mx": (TOKENS, 12288, 4096, "mxfp4", "mxfp4", False),
}
SWEEP = [
    GemmConfig(128, 128, 64, 8, 8, 3), GemmConfig(128, 256, 64, 8, 8, 3), GemmConfig(256, 128, 64, 8, 8, 3),
    GemmConfig(128, 128, 128, 8, 8, 3), GemmConfig(128, 256, 64, 8, 8, 4), GemmConfig(128, 128, 64, 8, 4, 4),
    GemmConfig(64, 256, 64, 8, 4, 4), GemmConfig(128, 64, 64, 8, 4, 4),
    # persistent (one program per SM walking the tiles), with and without warp specialization
    GemmConfig(128, 256, 64, 8, 8, 3, persistent=True), GemmConfig(128, 128, 64, 8, 8, 4, persistent=True),
    GemmConfig(128, 256, 64, 8, 8, 3, persistent=True, warp_specialize=True), GemmConfig(128, 128, 64, 8, 4, 4, persistent=True),
]


def describe(config: GemmConfig) -> str:
    kind = ("/persistent" if config.persistent else "") + ("+ws" if config.warp_specialize else "")
    return f"{config.block_m}x{config.block_n}x{config.block_k}/w{config.num_warps}/s{config.num_stages}{kind}"


def bf16_gemm_ms(a16: torch.Tensor, b16: torch.Tensor, config: GemmConfig) -> float:
    """Our GEMM with BF16 operands already in memory (the ``decoded`` path minus its decode)."""
    c = torch.empty(a16.shape[0], b16.shape[0], dtype=torch.bfloat16, device="cuda")
    one = torch.ones(1, dtype=torch.float32, device="cuda")
    return do_bench(lambda: block_gemm.bf16_matmul(a16, b16, one, c, config=config), return_mode="median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--sweep", action="store_true", help="every tile configuration, not only the default")
    args = parser.parse_args()
    configs = SWEEP if args.sweep else [block_gemm.DEFAULT_CONFIG]
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}; ratio = cuBLAS BF16 time / time")
    print("| GEMM | M x N x K | cuBLAS BF16 ms (TFLOP/s) | config | ours on BF16 | fused | decoded |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    torch.manual_seed(0)
    for name in args.shapes:
        m, n, k, a_gran, b_gran, transposed = SHAPES[name]
        x = torch.randn(m, k, device="cuda")
        w = torch.randn(k, n, device="cuda") * 0.02 if transposed else torch.randn(n, k, device="cuda") * 0.02
        a, b = quantize(x, QuantSpec("fp4", a_gran)), quantize(w, QuantSpec("fp4", b_gran))
        a16 = x.to(torch.bfloat16)
        b16 = w.t().contiguous().to(torch.bfloat16) if transposed else w.to(torch.bfloat16)
        flops = 2 * m * n * k
        cublas = do_bench(lambda: torch.matmul(a16, b16.t()), return_mode="median")
        b_values = b.dequantize_2d().double()
        expected = a.dequantize_2d().double() @ (b_values if transposed else b_values.t())
        del x, w
        for config in configs:
            cells = []
            try:
                cells.append(f"{cublas / bf16_gemm_ms(a16, b16, config):.2f}x")
            except Exception as error:  # a configuration that does not fit shared memory
                cells.append(f"failed ({type(error).__name__})")
            for method in block_gemm.METHODS:
                def run(method=method, config=config):
                    return block_scaled_matmul(a, b, torch.bfloat16, b_transposed=transposed, method=method, config=config)
                try:
                    result = run()
                    error = ((result.double() - expected).norm() / expected.norm()).item()
                    if error > 2**-8:  # bf16 output rounding; the fp32 sums agree to ~1e-6
                        raise AssertionError(f"{name} {method} {describe(config)}: relative error {error:.2e}")
                    cells.append(f"{cublas / do_bench(run, return_mode='median'):.2f}x")
                except AssertionError:
                    raise
                except Exception as error:
                    cells.append(f"failed ({type(error).__name__})")
            print(f"| {name} | {m} x {n} x {k} | {cublas:.3f} ({flops / cublas / 1e9:.0f}) | {describe(config)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
