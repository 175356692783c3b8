"""The bound a fused RHT quantizer is held to against the reference (whose 16-term sums run in
PyTorch's matmul order): codes differ on rounding boundaries only, in at most 1 of 1000 elements,
each by at most one grid step (the widest E2M1 gap: 2 units of the block's scale)."""

from megatron_fp4.formats import unpack_codes


def assert_within_summation_order(fast, reference, operand_shape) -> None:
    differing = unpack_codes(fast.data) != unpack_codes(reference.data)
    assert differing.float().mean() < 1e-3
    steps = (fast.dequantize_2d() - reference.dequantize_2d()).abs()[differing]
    grid_step = (reference.decode_scale() * 2).expand(operand_shape)[differing]
    assert (steps <= grid_step * (1 + 1e-6)).all()
