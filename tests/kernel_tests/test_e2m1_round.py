"""``_e2m1_round``, the E2M1 rounding every FP4 quantizer kernel shares, equals the reference
encoder (``formats.encode`` / ``decode``) on fp32 bit patterns: every tie and grid point of
E2M1 at scale 1, the neighbours of each, all of bf16's patterns, random fp32 patterns, and
the specials (signed zero, subnormals, Inf, NaN: NaN encodes as 6 with its sign, as the
reference's ``encode`` does).

The kernel's rounding is one fp32 addition of a binade-dependent "magic" 2^22 / 2^23 / 2^24; it
was checked equal to the previous integer form on all 2^32 fp32 patterns (in numpy, which
computes the same IEEE fp32 additions); this keeps a sample of that check in CI.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

import triton.language as tl  # noqa: E402

from megatron_fp4.formats import E2M1, decode, encode  # noqa: E402
from megatron_fp4.kernels.quantize_rows import _e2m1_round  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _round_kernel(q_ptr, value_ptr, code_ptr, n, BLOCK: tl.constexpr):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    value, code = _e2m1_round(tl.load(q_ptr + offsets, mask=mask, other=0.0))
    tl.store(value_ptr + offsets, value, mask=mask)
    tl.store(code_ptr + offsets, code, mask=mask)


def _round(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    q = q.to(DEVICE).contiguous()
    value = torch.empty_like(q)
    code = torch.empty(q.shape, dtype=torch.int32, device=DEVICE)
    block = 1024
    _round_kernel[(triton.cdiv(q.numel(), block),)](q, value, code, q.numel(), BLOCK=block)
    return value.cpu(), code.cpu()


def _patterns() -> torch.Tensor:
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    ties = (grid[1:] + grid[:-1]) / 2
    points = torch.cat([grid, ties, torch.tensor([6.5, 7.0, 8.0, 1e30, 2.0**-126, 2.0**-149])])
    bits = points.view(torch.int32)
    neighbours = torch.cat([bits + delta for delta in (-2, -1, 0, 1, 2)]).view(torch.float32)
    bf16_all = torch.arange(0, 1 << 16, dtype=torch.int32).to(torch.int16).view(torch.bfloat16).float()
    generator = torch.Generator().manual_seed(20261202)
    random_bits = torch.randint(-(1 << 31), (1 << 31) - 1, (1 << 16,), dtype=torch.int64, generator=generator).to(torch.int32)
    specials = torch.tensor([float("inf"), -float("inf"), float("nan"), -float("nan"), -0.0])
    values = torch.cat([neighbours, bf16_all, random_bits.view(torch.float32), specials])
    return torch.cat([values, -values])


def test_matches_the_reference_encoder_on_fp32_patterns():
    q = _patterns()
    value, code = _round(q)
    # reference: encode() sends NaN to the largest magnitude with its sign bit (the kernels' rule)
    reference_code = encode(torch.where(torch.isnan(q), torch.copysign(torch.full_like(q, 6.0), q), q), E2M1).to(torch.int32)
    assert torch.equal(code, reference_code)
    reference_value = decode(reference_code, E2M1)
    assert torch.equal(value.view(torch.int32), reference_value.view(torch.int32))  # -0.0 included
