"""Session 11, call 3: where the inline operand's fp32-input GPU test failed (call 2), which
elements differ from the reference and how."""
import torch

from megatron_fp4.kernels.quantize_rows import quantize_rows_inline
from megatron_fp4.occ import OCCConfig, occ_bounds, quantize_with_inline_outliers_reference

for shape in [(8192, 4096), (2048, 11008), (8, 64)]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator) * torch.logspace(-2, 1, shape[1])[None, :]
    x[0, 0], x[1, :], x[2, shape[1] // 2] = 3e4, 0.0, -500.0
    x = x.cuda()
    low, high = occ_bounds(x, OCCConfig())
    ref = quantize_with_inline_outliers_reference(x, low, high)
    for options in ({}, {"num_warps": 4}, {"block": 1024}):
        fast = quantize_rows_inline(x, torch.stack([low, high]), **options)
        fb, rb = fast.data.view(torch.uint8), ref.data.view(torch.uint8)
        bad = (fb != rb).nonzero()
        bad_scale = (fast.scale != ref.scale).nonzero()
        print(shape, options, "bytes differing", bad.shape[0], "scales differing", bad_scale.shape[0], "low/high", low.item(), high.item())
        for r, c in bad[:6].tolist():
            print("   ", r, c, "x", x[r, c].item(), "fast", hex(fb[r, c].item()), "ref", hex(rb[r, c].item()), "scale", fast.scale[r].item(), ref.scale[r].item())
        for (r, _) in bad_scale[:3].tolist():
            print("    scale row", r, fast.scale[r].item(), ref.scale[r].item(), "row max/min", x[r].max().item(), x[r].min().item())
