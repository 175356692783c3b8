"""``quantize_nvfp4._e2m1_stochastic_directed``, the compiled kernels' stochastic E2M1 rounding in
fp32 arithmetic rounding upward, gives the reference's value and code (``formats.encode_stochastic``
with the draw u = draw 2^-16) for every value and draw.

On CPU its arithmetic is replayed exactly in float64 (each fp32 operation rounding upward: the
float64 result, exact here, moved to the next fp32 number above when it lies between two): grid
points and their fp32 neighbours, midpoints, values below 1e-30, above 6, NaN / Inf, with all
65536 draws, and random values with random draws (the whole set was checked with all draws for
330M pairs when it was written; benchmarks/NOTES.md, session 17). On the GPU the kernel form runs
beside ``_e2m1_stochastic`` (the interpreter's integer form) on the same values and draw words:
the special values with every draw, random values (subnormals included: the inline PTX keeps
them, where libdevice's fma would flush a subnormal |q| to zero and round it down at draw 0).
"""

import math
import os

import pytest
import torch

from megatron_fp4.formats import E2M1, decode, encode_stochastic

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _up(exact: torch.Tensor) -> torch.Tensor:
    """float64 -> fp32 rounding toward +inf (exact holds the operation's exact result)."""
    nearest = exact.float()
    below = nearest.double() < exact
    return torch.where(below, torch.nextafter(nearest, torch.full_like(nearest, math.inf)), nearest)


def directed_replay(q: torch.Tensor, draws: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's arithmetic (value, code) for fp32 q and 16-bit draws, operation by operation."""
    bits = q.view(torch.int32)
    magnitude = torch.minimum(q.abs().nan_to_num(6.0, 6.0), torch.tensor(6.0))
    binade = torch.clamp_min(magnitude.view(torch.int32) & 0x7F800000, 0x3F800000).view(torch.float32)
    half_one_plus_draw = ((draws.to(torch.int32) << 7) | 0x3F000000).view(torch.float32)
    product = half_one_plus_draw.double() * binade.double()
    first = magnitude.double() - product  # exact in float64 unless magnitude is below its ulp there
    fma = _up(first)
    lost = (magnitude > 0) & (first == -product)  # the exact result lies above -product: the next fp32 up
    fma = torch.where(lost, torch.nextafter(fma, torch.full_like(fma, math.inf)), fma)
    magic = binade * 6291456.0
    total = _up(fma.double() + (binade * 6291456.5).double())
    value = ((total - magic).view(torch.int32) | (bits & -2147483648)).view(torch.float32)
    index = (total.view(torch.int32) + (magic.view(torch.int32) >> 22) + 5) & 7
    return value, index | ((bits >> 28) & 8)


def special_values() -> torch.Tensor:
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    points = torch.cat([grid, (grid[1:] + grid[:-1]) / 2, torch.tensor([1e-45, 1e-30, 1e-7, 0.25, 0.999999, 5.999999, 6.5, 3e38, math.inf, math.nan])])
    points = torch.cat([points, torch.nextafter(points, torch.full_like(points, 1e9)), torch.nextafter(points, torch.full_like(points, -1e9))])
    return torch.cat([points, -points])


def assert_reference(q: torch.Tensor, draws: torch.Tensor, value: torch.Tensor, code: torch.Tensor) -> None:
    expected = encode_stochastic(q, E2M1, draws=draws.double().float() / 65536.0)
    assert torch.equal(code.to(torch.uint8), expected)
    finite = ~torch.isnan(q)  # NaN: code 7 with the sign (the reference's saturation), value +-6
    expected_value = decode(expected, E2M1)
    assert torch.equal(value[finite].view(torch.int32), expected_value[finite].view(torch.int32))


def test_directed_rounding_arithmetic_equals_the_reference_for_every_draw():
    values = special_values()
    q = values[:, None].expand(-1, 65536).reshape(-1)
    draws = torch.arange(65536).repeat(values.numel())
    finite = ~torch.isnan(q)
    value, code = directed_replay(q, draws)
    assert_reference(q[finite], draws[finite], value[finite], code[finite])
    nan = ~finite  # NaN saturates to 6 (code 7) with its sign, as the integer form
    assert torch.equal(code[nan] & 7, torch.full_like(code[nan], 7))


def test_directed_rounding_arithmetic_equals_the_reference_on_random_values():
    generator = torch.Generator().manual_seed(17)
    q = torch.cat([torch.rand(200_000, generator=generator) * 13.0 - 6.5, torch.rand(50_000, generator=generator).pow(12) * torch.sign(torch.randn(50_000, generator=generator))])
    draws = torch.randint(0, 65536, q.shape, generator=generator)
    assert_reference(q, draws, *directed_replay(q, draws))


@pytest.mark.skipif(DEVICE != "cuda" or os.environ.get("TRITON_INTERPRET") == "1", reason="the directed form is compiled only (libdevice)")
def test_kernel_form_equals_the_integer_form_and_the_reference():
    import triton
    import triton.language as tl

    from megatron_fp4.kernels.quantize_nvfp4 import _e2m1_stochastic, _e2m1_stochastic_directed

    @triton.jit
    def probe(q_ptr, word_ptr, value_ptr, code_ptr, n, DIRECTED: tl.constexpr, BLOCK: tl.constexpr):
        pairs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = pairs < n
        word = tl.load(word_ptr + pairs, mask=mask, other=0)
        for half in tl.static_range(2):
            q = tl.load(q_ptr + 2 * pairs + half, mask=mask, other=0.0)
            if DIRECTED:
                value, code = _e2m1_stochastic_directed(q, word, half == 1)
            else:
                value, code = _e2m1_stochastic(q, word, half == 1)
            tl.store(value_ptr + 2 * pairs + half, value, mask=mask)
            tl.store(code_ptr + 2 * pairs + half, code, mask=mask)

    generator = torch.Generator().manual_seed(23)
    values = special_values()  # each with every draw, in both halves of the word
    every_draw = torch.arange(65536, dtype=torch.int64)
    special_q = values.repeat_interleave(2 * 65536)
    special_words = (every_draw | (every_draw << 16)).repeat(values.numel())
    random_q = torch.cat([torch.rand(1 << 22, generator=generator) * 13.0 - 6.5, torch.rand(1 << 20, generator=generator).pow(12)])  # subnormals too
    random_words = torch.randint(0, 2**32, (random_q.numel() // 2,), generator=generator, dtype=torch.int64)
    q = torch.cat([special_q, random_q])
    words = torch.cat([special_words, random_words])
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)
    results = []
    for directed in (True, False):
        value, code = torch.empty(q.numel(), device=DEVICE), torch.empty(q.numel(), dtype=torch.int32, device=DEVICE)
        probe[(triton.cdiv(words.numel(), 1024),)](q.to(DEVICE), words.to(DEVICE), value, code, words.numel(), DIRECTED=directed, BLOCK=1024)
        results.append((value.cpu(), code.cpu()))
    (value, code), (int_value, int_code) = results
    assert torch.equal(code, int_code)
    assert torch.equal(value.view(torch.int32), int_value.view(torch.int32))
    draws = torch.stack([words.to(torch.int64) & 0xFFFF, (words.to(torch.int64) >> 16) & 0xFFFF], dim=1).reshape(-1)
    finite = ~torch.isnan(q)
    assert_reference(q[finite], draws[finite], value[finite], code[finite])
