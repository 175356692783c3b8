"""The counter-based generator behind stochastic rounding (``megatron_fp4.stochastic``): Philox4x32-10
against Random123's known-answer vectors, the uniform numbers' range and distribution, seeds."""

import math

import pytest
import torch

from megatron_fp4.stochastic import new_seed, philox4x32, philox_uniform, philox_words


def _words(*values):
    return tuple(torch.tensor([v], dtype=torch.int64) for v in values)


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Random123 kat_vectors, philox4x32 with 10 rounds
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0), (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ],
)
def test_philox_matches_the_known_answer_vectors(counter, key, expected):
    assert tuple(int(word) for word in philox4x32(_words(*counter), _words(*key))) == expected


def test_first_word_counts_past_two_to_the_32():
    """Counter j is (j mod 2^32, j div 2^32, 0, 0): tensors past 4G counters get fresh numbers."""
    seed = torch.tensor([12345, 678], dtype=torch.int64)
    index = torch.tensor([5, 2**32 + 5, 2**33 + 5], dtype=torch.int64)
    words = philox_words(index, seed)[:, 0]
    assert len(set(words.tolist())) == 3
    assert int(words[1]) == int(philox4x32(_words(5, 1, 0, 0), _words(12345, 678))[0])


def test_uniform_numbers_are_in_range_and_uniform():
    """1M numbers: all in [0, 1) on the 2^-16 lattice; mean within 5 sigma of 1/2 (sigma =
    sqrt(1/12 / n) = 2.9e-4); every tenth of [0, 1) holds n/10 within 5 sigma (sqrt(n 0.1 0.9) = 300)."""
    n = 1_000_000
    u = philox_uniform(new_seed("cpu", torch.Generator().manual_seed(3)), (1000, 1000))
    assert u.dtype == torch.float32 and u.min() >= 0 and u.max() < 1
    assert torch.equal(u * 2**16, torch.floor(u * 2**16))
    assert len(torch.unique(u)) > 60000  # the lattice is used: ~63k of its 65536 points among 1M draws
    assert abs(u.mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / n)
    counts = torch.histc(u, bins=10, min=0, max=1)
    assert (counts - n / 10).abs().max() < 5 * math.sqrt(n * 0.1 * 0.9)


def test_seeds_make_it_deterministic_and_differ_between_draws():
    first = new_seed("cpu", torch.Generator().manual_seed(9))
    assert torch.equal(first, new_seed("cpu", torch.Generator().manual_seed(9)))
    assert first.dtype == torch.int64 and first.shape == (2,) and (first >= 0).all() and (first < 2**31).all()
    generator = torch.Generator().manual_seed(9)
    assert not torch.equal(new_seed("cpu", generator), new_seed("cpu", generator))
    assert torch.equal(philox_uniform(first, (7, 5)), philox_uniform(first.clone(), (7, 5)))
    with pytest.raises(ValueError, match="two int64 words"):
        philox_uniform(torch.tensor([1, 2], dtype=torch.int32), (3,))


def test_chunked_evaluation_gives_the_same_numbers(monkeypatch):
    """The PyTorch form runs in chunks to bound its memory; the numbers do not depend on them."""
    import megatron_fp4.stochastic as stochastic

    seed = new_seed("cpu", torch.Generator().manual_seed(4))
    whole = philox_uniform(seed, (37, 101))
    monkeypatch.setattr(stochastic, "CHUNK", 1000)  # 3737 elements: three full chunks and a partial one
    assert torch.equal(philox_uniform(seed, (37, 101)), whole)


def test_each_counter_gives_eight_consecutive_numbers():
    """Element i takes half i mod 2 (low 16 bits first) of word (i mod 8) div 2 of counter i div 8:
    all 128 bits of a counter used, an eighth of the integer work of one counter per element."""
    seed = torch.tensor([77, 31337], dtype=torch.int64)
    u = philox_uniform(seed, (3, 20)).reshape(-1)  # 60 numbers: counters 0..7, the last partly used
    words = philox_words(torch.arange(8, dtype=torch.int64), seed)
    halves = torch.stack((words & 0xFFFF, words >> 16), dim=-1).reshape(-1)
    assert torch.equal(u, halves[:60].to(torch.float32) * 2.0**-16)
    assert int(words[2, 1]) == int(philox4x32(_words(2, 0, 0, 0), _words(77, 31337))[1])
    assert float(u[8 * 2 + 2 * 1 + 1]) == (int(words[2, 1]) >> 16) * 2.0**-16  # counter 2, word 1, high half
