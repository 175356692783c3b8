"""Uniform draws for stochastic rounding from a counter-based generator (Philox4x32-10).

Stochastic rounding needs one uniform number per element. Drawing them with ``torch.rand`` and
handing them to a kernel costs a 4-byte-per-element tensor written and read again (720 MB for the
output gradient of a 7B fc1 at 8192 tokens, twice per backward) and two extra passes over memory.
A counter-based generator instead computes element i's number from (seed, i) wherever it is
needed: the fused quantizers (``megatron_fp4.kernels.quantize_nvfp4``, ``quantize_tokens``) derive
it in registers, and this module's PyTorch form gives the reference the very same numbers, so both
round identically.

The generator is Philox4x32 with 10 rounds (Salmon et al., SC'11; the constants of Random123,
cuRAND and Triton): counter (j mod 2^32, j div 2^32, 0, 0), key = the two seed words. Its four
32-bit output words give eight 16-bit numbers: element i takes half i mod 2 (0: the low 16 bits)
of word (i mod 8) div 2 of counter j = i div 8, and its number is that half times 2^-16, a
uniform number on the 2^-16 lattice of [0, 1), exact in fp32. Sixteen bits per draw (session 16;
until then 24 bits, four numbers per counter) halve the generator's integer work, which is most
of the stochastic quantizers' instructions. The cost in accuracy: a rounding that should go up
with probability f goes up with probability ceil(f 2^16) 2^-16 on E2M1's grid (the kernels' exact
integer test ``draw < f``), a bias below 2^-16 of the gap between the two grid points, against a
rounding error of up to the whole gap (Blackwell's stochastic-rounding conversion to FP4, PTX's
``cvt.rs.satfinite.e2m1x4.f32``, takes one 32-bit word of random bits for four values). The seed is drawn from torch's generator on the tensor's device
(``new_seed``): ``torch.manual_seed`` makes a run repeatable, and on CUDA the draw happens on the
device (no host synchronisation; a CUDA-graph replay draws a fresh seed instead of replaying a
constant one).
"""

from __future__ import annotations

import torch

__all__ = ["new_seed", "philox_uniform", "philox_words", "philox4x32", "PHILOX_ROUNDS", "DRAWS_PER_COUNTER", "DRAW_BITS"]

PHILOX_ROUNDS = 10
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # key increments (Weyl sequence)
MASK32 = 0xFFFFFFFF
SEED_LIMIT = 2**31 - 1  # each seed word below 2^31: an int64 on every device, a uint32 in the kernel
CHUNK = 1 << 22  # elements per step of the PyTorch form (bounds its int64 temporaries to ~0.4 GB)
DRAW_BITS = 16  # bits per uniform number
DRAWS_PER_COUNTER = 8  # numbers per Philox evaluation: both 16-bit halves of its four output words


def new_seed(device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Two seed words (int64 [2], each in [0, 2^31)) drawn from ``generator`` or torch's global
    stream on ``device``."""
    return torch.randint(0, SEED_LIMIT, (2,), dtype=torch.int64, device=device, generator=generator)


def _mulhilo(a: torch.Tensor, multiplier: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * multiplier for uint32 values held in int64, without
    overflowing int64: a = a1 2^16 + a0, so a m = (a1 m) 2^16 + a0 m with both products < 2^48."""
    a0, a1 = a & 0xFFFF, a >> 16
    t = a1 * multiplier
    s = ((t & 0xFFFF) << 16) + a0 * multiplier  # < 2^49
    return (t >> 16) + (s >> 32), s & MASK32


def philox4x32(counter: tuple[torch.Tensor, ...], key: tuple[torch.Tensor, torch.Tensor], rounds: int = PHILOX_ROUNDS) -> tuple[torch.Tensor, ...]:
    """Philox4x32 on uint32 words held in int64 tensors: four counter words and two key words in,
    four output words out (checked against Random123's known-answer vectors in the tests)."""
    c0, c1, c2, c3 = (word & MASK32 for word in counter)
    k0, k1 = (word & MASK32 for word in key)
    for _ in range(rounds):
        hi0, lo0 = _mulhilo(c0, PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
    return c0, c1, c2, c3


def philox_words(counter_index: torch.Tensor, seed: torch.Tensor, rounds: int = PHILOX_ROUNDS) -> torch.Tensor:
    """The four output words (int64 [..., 4]) for counters (j mod 2^32, j div 2^32, 0, 0), key = seed."""
    zero = torch.zeros_like(counter_index)
    words = philox4x32((counter_index & MASK32, (counter_index >> 32) & MASK32, zero, zero), (seed[0], seed[1]), rounds)
    return torch.stack(words, dim=-1)


def philox_uniform(seed: torch.Tensor, shape: tuple[int, ...] | torch.Size, device: torch.device | str | None = None) -> torch.Tensor:
    """fp32 uniform numbers in [0, 1) of ``shape``: element i (row-major) from half i mod 2 of word
    (i mod 8) div 2 of counter i div 8, the numbers the fused quantizers compute for the same seed
    and layout (module docstring)."""
    if seed.dtype != torch.int64 or seed.numel() != 2:
        raise ValueError(f"philox_uniform: the seed is two int64 words (new_seed), got {seed.dtype} x {seed.numel()}")
    device = device if device is not None else seed.device
    count = 1
    for size in shape:
        count *= int(size)
    seed = seed.to(device)
    out = torch.empty(count, dtype=torch.float32, device=device)
    # in chunks: the int64 round arithmetic holds ~10 temporaries of 8 B per counter, which for a
    # 7B output gradient at once would be several GB (this path serves the reference and the block
    # recipes' stochastic rounding where no kernel takes it)
    step = max(DRAWS_PER_COUNTER, CHUNK - CHUNK % DRAWS_PER_COUNTER)  # chunks start on a counter boundary
    for start in range(0, count, step):
        stop = min(count, start + step)
        counters = torch.arange(start // DRAWS_PER_COUNTER, -(-stop // DRAWS_PER_COUNTER), dtype=torch.int64, device=device)
        words = philox_words(counters, seed)  # [counters, 4]
        halves = torch.stack((words & 0xFFFF, words >> DRAW_BITS), dim=-1).reshape(-1)[: stop - start]
        out[start:stop] = halves.to(torch.float32) * 2.0**-DRAW_BITS
    return out.reshape(tuple(shape))
