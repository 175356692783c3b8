"""Session 12 debug (ran against commit a8b38e9 with the `pack` option, since removed): where the word-packed grad quantizer differs from the reference on the GPU
(test_every_transposed_word_width_writes_the_same_bytes failed at 4096x1000 for pack 2 and 4),
and the pass's GPU time without host gaps (CUDA-graph replay) for each tile and pack."""

import time

import torch
from triton.testing import do_bench_cudagraph

from megatron_fp4.backward import quantize_grad_output_delayed_reference, quantize_grad_output_reference
from megatron_fp4.kernels.quantize_grad import quantize_grad_folded
from megatron_fp4.quantize import QuantSpec

E5M2 = QuantSpec("fp8_e5m2", "tensor")


def mismatches(fast, reference):
    out = []
    for a, b, name in zip(fast, reference, ("dgrad", "wgrad")):
        x, y = a.data.contiguous().view(torch.uint8), b.data.contiguous().view(torch.uint8)
        bad = (x != y).nonzero()
        out.append(f"{name} {bad.shape[0]} bad, first {bad[:4].tolist()}, scale equal {torch.equal(a.scale, b.scale)}")
    return "; ".join(out)


for m, n in ((4096, 1000), (4096, 1004), (4096, 1001), (256, 1000), (4096, 1008), (4096, 1024), (1000, 720), (4096, 128), (8192, 4096), (8192, 11008), (4096, 12288), (8192, 2752), (8192, 5120), (1000, 13824)):
    for pack in (1, 2, 4):
        for seed in (1, 2):
            generator = torch.Generator().manual_seed(seed)
            g = (torch.randn(m, n, generator=generator) * torch.logspace(-5, 1, m)[:, None]).to(torch.bfloat16).cuda()
            ws = (torch.rand(n, generator=generator) * 0.1 + 1e-3).cuda()
            xs = (torch.rand(m, generator=generator) * 3).cuda()
            current = mismatches(quantize_grad_folded(g, E5M2, E5M2, ws, xs, pack=pack), quantize_grad_output_reference(g, E5M2, E5M2, ws, xs))
            h1, h2 = torch.tensor([0.5, 1e4], device="cuda"), torch.tensor([0.5, 1e4], device="cuda")
            delayed = mismatches(quantize_grad_folded(g, E5M2, E5M2, ws, xs, amax_history=h1, pack=pack), quantize_grad_output_delayed_reference(g, E5M2, E5M2, ws, xs, h2))
            print(f"{m}x{n} pack {pack} seed {seed}: current [{current}] delayed [{delayed}] history equal {torch.equal(h1, h2)}", flush=True)

print("\n| shape | mode | tile/warps | pack | graph us | share of copy | host us per call |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for m, n in ((8192, 11008), (16384, 5120)):
    g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    ws, xs = torch.rand(n, device="cuda") + 0.5, torch.rand(m, device="cuda") + 0.5
    copy_us = do_bench_cudagraph(lambda: g.clone(), return_mode="median") * 1e3
    history = torch.zeros(2, device="cuda")
    quantize_grad_folded(g, E5M2, E5M2, ws, xs, amax_history=history)
    for tile, warps in (((64, 128), 4), ((32, 128), 4), ((128, 64), 4)):
        for pack in (1, 2, 4):
            for mode, extra in (("current", {}), ("delayed", {"amax_history": history})):
                fn = lambda: quantize_grad_folded(g, E5M2, E5M2, ws, xs, tile=tile, num_warps=warps, pack=pack, **extra)
                us = do_bench_cudagraph(fn, return_mode="median") * 1e3
                fn()
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(50):
                    fn()
                host = (time.perf_counter() - start) / 50 * 1e6
                torch.cuda.synchronize()
                print(f"| {m}x{n} | {mode} | {tile[0]}x{tile[1]}/{warps} | {pack} | {us:.0f} | {copy_us / us:.2f} | {host:.0f} |", flush=True)
    del g
    torch.cuda.empty_cache()
