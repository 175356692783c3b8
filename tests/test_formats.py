import pytest
import torch

from megatron_fp4.formats import E1M2, E2M1, E3M0, FORMATS, decode, encode, get_format, pack_codes, round_to_grid, unpack_codes

ALL = [E2M1, E1M2, E3M0]


def test_grids_are_the_papers():
    assert E2M1.magnitudes == (0, 0.5, 1, 1.5, 2, 3, 4, 6)
    assert E1M2.magnitudes == tuple(i / 4 for i in range(8))  # uniform, like INT4 with a sign bit
    assert E3M0.magnitudes == (0, 0.25, 0.5, 1, 2, 4, 8, 16)  # zero plus powers of two
    assert E2M1.max_value == 6
    with pytest.raises(ValueError, match="unknown FP4 format 'e4m3'"):
        get_format("e4m3")


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_round_to_grid_is_nearest(fmt):
    x = torch.randn(20000) * fmt.max_value / 2
    rounded = round_to_grid(x, fmt)
    grid = torch.tensor(fmt.magnitudes)
    distance = (x.abs()[:, None] - grid[None, :]).abs()
    best = distance.min(dim=1).values
    in_range = x.abs() <= fmt.max_value
    # exact: the chosen point is at the minimal distance (ties included)
    assert torch.equal((rounded.abs() - x.abs()).abs()[in_range], best[in_range])
    assert torch.equal(torch.sign(rounded[rounded != 0]), torch.sign(x[rounded != 0]))
    # saturation beyond the largest magnitude
    assert torch.equal(rounded[~in_range].abs(), torch.full_like(rounded[~in_range], fmt.max_value))


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_ties_go_to_even_code(fmt):
    grid = fmt.magnitudes
    for i in range(7):
        midpoint = (grid[i] + grid[i + 1]) / 2
        expected = grid[i] if i % 2 == 0 else grid[i + 1]
        got = round_to_grid(torch.tensor([midpoint, -midpoint]), fmt)
        assert got.tolist() == [expected, -expected], (fmt.name, midpoint)


def test_e2m1_ties_match_ieee_round_half_even():
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    assert round_to_grid(ties).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]


def test_nan_stays_nan_and_inf_saturates():
    out = round_to_grid(torch.tensor([float("nan"), float("inf"), -float("inf")]))
    assert torch.isnan(out[0]) and out[1:].tolist() == [6.0, -6.0]


@pytest.mark.parametrize("fmt", ALL, ids=lambda f: f.name)
def test_encode_decode_roundtrip(fmt):
    codes = torch.arange(16, dtype=torch.uint8)
    assert torch.equal(encode(decode(codes, fmt), fmt), codes)  # -0.0 keeps its code 8
    x = torch.randn(5000) * fmt.max_value
    assert torch.equal(decode(encode(x, fmt), fmt), round_to_grid(x, fmt))


def test_e2m1_codes_are_the_hardware_bit_patterns():
    # 0b0111 = +6.0, 0b1001 = -0.5, 0b0100 = 2.0 (sign, 2 exponent bits, 1 mantissa bit)
    assert encode(torch.tensor([6.0, -0.5, 2.0])).tolist() == [0b0111, 0b1001, 0b0100]


def test_pack_unpack_bit_exact():
    codes = torch.randint(0, 16, (37, 64), dtype=torch.uint8)
    packed = pack_codes(codes)
    assert packed.shape == (37, 32) and packed.dtype == torch.uint8
    assert torch.equal(unpack_codes(packed), codes)
    assert pack_codes(torch.tensor([0x3, 0xA], dtype=torch.uint8)).item() == 0xA3  # first element low nibble
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    assert torch.equal(pack_codes(unpack_codes(every_byte)), every_byte)


def test_pack_rejects_odd_length():
    with pytest.raises(ValueError, match="last dim must be even"):
        pack_codes(torch.zeros(3, 5, dtype=torch.uint8))
    assert set(FORMATS) == {"e2m1", "e1m2", "e3m0"}
