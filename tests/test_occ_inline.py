"""OCC's ``inline`` compensation: the clamped entries as E4M3 values inside the FP8 activation
operand (megatron_fp4.occ). Its definition against an independent per-element implementation,
its scale rule, its NaN policy, its validation, and what it costs in fidelity against exact OCC."""

import shlex

import pytest
import torch

from megatron_fp4.fidelity import activation_ablation, gemm_output_ablation, synthetic_llm_activation
from megatron_fp4.formats import E2M1
from megatron_fp4.occ import OCCConfig, occ_bounds, quantize_with_inline_outliers, quantize_with_inline_outliers_reference
from megatron_fp4.quantize import NonFiniteError, QuantSpec
from megatron_fp4.recipe import FP4Recipe

GRID = torch.tensor(E2M1.magnitudes, dtype=torch.float64)  # the non-negative E2M1 magnitudes
LLAMA = ("--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --max-position-embeddings 32 "
         "--micro-batch-size 2 --global-batch-size 2 --train-iters 1 --lr 1e-3 --mock-data --tokenizer-type NullTokenizer --vocab-size 128")


def _scalar_inline_operand(x: torch.Tensor, low: float, high: float) -> tuple[list[float], list[list[float]]]:
    """(scale per row, element values) one element at a time in float64: the nearest E2M1 grid
    point of clamp(x)/s inside the bounds, the float8 E4M3 value of x/s outside, with
    s = max(amax(clamp x) / 6, amax(x) / 448) per row (1 for a zero row)."""
    scales, rows = [], []
    for row in x.double().tolist():
        clamped = [min(max(v, low), high) for v in row]
        clamped_amax, amax = max(abs(v) for v in clamped), max(abs(v) for v in row)
        scale = max(clamped_amax / 6 if clamped_amax > 0 else 1.0, amax / 448)
        values = []
        for v, c in zip(row, clamped):
            if v > high or v < low:
                values.append(torch.tensor(v / scale, dtype=torch.float32).clamp(-448, 448).to(torch.float8_e4m3fn).item())
            else:
                magnitude = GRID[torch.argmin((GRID - abs(c) / scale).abs())].item()
                values.append(-magnitude if c < 0 else magnitude)
        scales.append(scale)
        rows.append(values)
    return scales, rows


def test_operand_is_its_per_element_definition():
    torch.manual_seed(int(torch.randint(1 << 30, ())))  # fresh inputs each run
    x = torch.randn(12, 40) * torch.logspace(-1, 1, 40)
    x[3, 7] = 1e4  # > 75x the clamped row maximum: the row's scale widens instead of saturating
    low, high = occ_bounds(x, OCCConfig())
    q = quantize_with_inline_outliers_reference(x, low, high)
    scales, values = _scalar_inline_operand(x, low.item(), high.item())
    # scales: the IEEE quotients in fp32 vs float64 rounded once: 1 ulp
    assert torch.allclose(q.scale.reshape(-1).double(), torch.tensor(scales, dtype=torch.float64), rtol=2**-23, atol=0)
    # elements: equal except where a quotient sits within an ulp of a rounding boundary (fp32 vs float64)
    mismatch = (q.element_values().double() != torch.tensor(values, dtype=torch.float64)).float().mean()
    assert mismatch < 0.01
    assert q.scale[3].item() == pytest.approx(1e4 / 448, rel=1e-6)
    assert q.dequantize_2d()[3, 7].item() == pytest.approx(1e4, rel=2**-4)  # E4M3: 3 mantissa bits


def test_clamped_entries_keep_their_value_to_e4m3_precision():
    x = synthetic_llm_activation(512, 256, seed=int(torch.randint(1 << 30, ())))
    low, high = occ_bounds(x, OCCConfig())
    q = quantize_with_inline_outliers_reference(x, low, high)
    outlier = (x > high) | (x < low)
    assert outlier.float().mean() > 0.01
    relative = ((q.dequantize_2d() - x.float()).abs() / x.float().abs())[outlier]
    assert relative.max() <= 2**-4  # half an E4M3 ulp: 2^-4 relative; saturation never reached
    inside = q.dequantize_2d()[~outlier]  # the rest: E2M1 values times the row scale
    assert torch.equal(inside, (q.element_values() * q.scale)[~outlier])
    assert torch.isin(q.element_values()[~outlier].abs(), GRID.float()).all()


def test_non_finite_input_never_becomes_finite():
    x = torch.randn(4, 32)
    x[1, 2], x[2, 3] = float("nan"), float("inf")
    low, high = torch.tensor(-1.0), torch.tensor(1.0)
    deq = quantize_with_inline_outliers(x, low, high).dequantize_2d()
    assert torch.isfinite(deq[[0, 3]]).all() and torch.isnan(deq[1:3]).all()
    with pytest.raises(NonFiniteError, match="qkv input"):
        quantize_with_inline_outliers(x, low, high, check_finite=True, name="qkv input")


def test_validation_names_the_flag():
    with pytest.raises(ValueError, match="no-fp4-occ-wgrad-compensation"):
        OCCConfig(compensation="inline", compensate_wgrad=False)
    with pytest.raises(ValueError, match="--fp4-occ-compensation inline"):
        FP4Recipe.paper(occ=OCCConfig(compensation="inline"), fprop_input=QuantSpec("fp4", "nvfp4"))
    with pytest.raises(ValueError, match="--fp4-occ-compensation inline"):
        FP4Recipe.paper(occ=OCCConfig(compensation="inline"), wgrad_input=QuantSpec("bf16", "tensor"))
    assert "inline" in FP4Recipe.paper(occ=OCCConfig(compensation="inline")).describe()


def test_flags():
    from megatron_fp4.training.arguments import parse_args

    args = parse_args(shlex.split(f"{LLAMA} --fp4 --fp4-recipe paper --fp4-occ-compensation inline"))
    assert args.fp4_quant_recipe.occ.inline
    with pytest.raises(SystemExit):
        parse_args(shlex.split(f"{LLAMA} --fp4 --fp4-recipe paper --fp4-occ-compensation inline --no-fp4-occ-wgrad-compensation"))
    with pytest.raises(SystemExit):  # a knob that would change nothing is an error, not ignored
        parse_args(shlex.split(f"{LLAMA} --fp4 --fp4-recipe paper --fp4-occ-hot-channel-fraction 0.1"))
    hot = parse_args(shlex.split(f"{LLAMA} --fp4 --fp4-occ-compensation hot_channels --fp4-occ-hot-channel-fraction 0.1")).fp4_quant_recipe
    assert hot.occ.hot_channel_fraction == 0.1


def test_fidelity_against_exact_compensation():
    """On an LLM-like activation whose clamped entries carry a large share of the energy (clamp
    alone: ~5 dB): the inline activation is within 1 dB of exact compensation (E4M3 rounding of
    the whole clamped value, 2^-4, instead of exact); the linear output, where the clamped entries
    meet Q(W) instead of W, within 4.5 dB, and far above clamping alone. The bounds come from 300
    fresh seeds each (session 9): activation gap mean 0.30 dB, at most 0.59 (the former 0.5 dB
    bound failed 2, one in a CI-like run, seed 237588240); output gap mean 1.9 dB, at most 3.5 (the
    former 3 dB failed 2, one on the H200, seed 303841913: 3.3 dB, the same on CPU)."""
    seed = int(torch.randint(1 << 30, ()))
    x = synthetic_llm_activation(2048, 512, seed=seed)
    activation = {row.method: row.snr_db for row in activation_ablation(x, (0.99,))}
    assert activation["clamp+inline"] > activation["clamp+comp"] - 1.0, seed
    w = (torch.randn(384, 512, generator=torch.Generator().manual_seed(seed)) * 0.02).to(torch.bfloat16)
    output = {row.method: row.snr_db for row in gemm_output_ablation(x, w)}
    assert output["clamp+inline"] > output["clamp+comp"] - 4.5, (seed, output)
    assert output["clamp+inline"] > output["clamp"] + 6.0, (seed, output)
