"""The backward-path Triton kernels against their PyTorch references.

Folded FP8 gradient quantizer and codes -> transposed FP8: bit for bit. DGE weight-gradient
scaling: within 16 ulp (the kernel's exp2(e·log2 d) against torch's pow; see kernels/dge_grad.py).
On CPU this runs in Triton's interpreter on small shapes; on a GPU compiled, on larger ones.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron_fp4.backward import new_grad_amax_state, quantize_grad_output_delayed_reference, quantize_grad_output_reference  # noqa: E402
from megatron_fp4.kernels.codes_to_fp8 import codes_to_fp8_t, codes_to_fp8_t_reference  # noqa: E402
from megatron_fp4.kernels.dge_grad import dge_scale_grad, dge_scale_grad_reference  # noqa: E402
from megatron_fp4.kernels import quantize_grad as quantize_grad_module  # noqa: E402
from megatron_fp4.kernels.quantize_grad import quantize_grad_folded  # noqa: E402
from megatron_fp4.quantize import QuantSpec, quantize  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
SHAPES = [(64, 64), (100, 72), (33, 130)] if DEVICE == "cpu" else [(64, 64), (1000, 720), (8192, 4096), (4096, 11008)]
E5M2, E4M3 = QuantSpec("fp8_e5m2", "tensor"), QuantSpec("fp8_e4m3", "tensor")


def bits(q):
    return q.data.contiguous().view(torch.uint8)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("specs", [(E5M2, E5M2), (E4M3, E5M2)])
def test_folded_grad_quantizer_is_bit_exact(shape, dtype, specs):
    m, n = shape
    # a wide dynamic range, so values land in the FP8 subnormals too
    g = (torch.randn(m, n) * torch.logspace(-6, 2, m)[:, None]).to(dtype).to(DEVICE)
    g[0, :4] = torch.tensor([0.0, -0.0, 1e-30, -1e-30])
    weight_scale = torch.rand(n, device=DEVICE) * 0.1 + 1e-3
    input_scale = torch.rand(m, device=DEVICE) * 3
    # every fold for bf16 gradients; fp32 ones (a different load, the same arithmetic) with both scales
    all_folds = [(weight_scale, input_scale), (None, input_scale), (None, None)]
    for folds in all_folds if dtype == torch.bfloat16 or DEVICE == "cuda" else all_folds[:1]:
        fast = quantize_grad_folded(g, *specs, *folds)
        reference = quantize_grad_output_reference(g, *specs, *folds)
        for f, r in zip(fast, reference):
            assert torch.equal(bits(f), bits(r))
            assert torch.equal(f.scale, r.scale) and f.shape == r.shape
    _, wgrad = quantize_grad_folded(g, *specs, weight_scale, input_scale)
    assert wgrad.data.t().is_contiguous()  # stored transposed: the FP8 GEMM's A operand as is
    if DEVICE == "cuda":  # the other layouts the sweep picks from (the interpreter has no layouts): the same bytes
        reference = quantize_grad_output_reference(g, *specs, weight_scale, input_scale)
        for options in ({"tile": (64, 64)}, {"tile": (128, 64)}, {"tile": (64, 64), "num_warps": 2}):
            for f, r in zip(quantize_grad_folded(g, *specs, weight_scale, input_scale, **options), reference):
                assert torch.equal(bits(f), bits(r)) and torch.equal(f.scale, r.scale), options


# finalize_programs 1: one finalisation program rewrites every tile (its loop); margin: the history's headroom in binades
@pytest.mark.parametrize("finalize_programs, margin", [(None, 0), (1, 1)] + ([(None, 1), (1, 0)] if DEVICE == "cuda" else []))
@pytest.mark.parametrize("specs", [(E5M2, E5M2)] + ([(E4M3, E5M2)] if DEVICE == "cuda" else []))  # CPU: one pair (interpreter time)
def test_delayed_scaling_is_bit_exact_and_falls_back_when_it_would_saturate(specs, finalize_programs, margin, monkeypatch):
    """Delayed scaling over a sequence of gradients, kernel against reference, operands, scales
    and the updated state bit for bit (so the kernels' scratch is zero again after each call):
    the first call (empty history: the current scale), a smaller gradient (the history's larger
    scale, no rewrite), a larger one in one operand only (the finalisation rewrites it with its
    current scale), one that stays put, and a NaN (NaN scale, history kept)."""
    if finalize_programs is not None:
        monkeypatch.setattr(quantize_grad_module, "FINALIZE_PROGRAMS", finalize_programs)
    m, n = SHAPES[1]
    generator = torch.Generator().manual_seed(4)
    weight_scale = (torch.rand(n, generator=generator) * 0.1 + 1e-3).to(DEVICE)
    input_scale = (torch.rand(m, generator=generator) * 10 + 1e-2).to(DEVICE)
    history_fast = new_grad_amax_state(DEVICE)
    history_reference = new_grad_amax_state(DEVICE)
    base = torch.randn(m, n, generator=generator)
    larger_in_dgrad_only = base.clone()
    larger_in_dgrad_only[:, 0] *= 50  # dgrad folds a column scale: the larger column dominates there
    with_nan = base.clone()
    with_nan[3, 5] = float("nan")
    for step, g in enumerate([base, base * 0.25, larger_in_dgrad_only, base * 0.5, with_nan, base]):
        g = g.to(torch.bfloat16).to(DEVICE)
        fast = quantize_grad_folded(g, *specs, weight_scale, input_scale, amax_history=history_fast, amax_margin=margin)
        reference = quantize_grad_output_delayed_reference(g, *specs, weight_scale, input_scale, history_reference, amax_margin=margin)
        for a, b in zip(fast, reference):
            if step == 4:  # NaN scale: every element decodes to NaN (NaN byte patterns may differ)
                assert torch.isnan(a.scale).all() and torch.isnan(b.scale).all()
                continue
            assert torch.equal(bits(a), bits(b)), step
            assert torch.equal(a.scale, b.scale), step
        assert torch.equal(history_fast, history_reference), step
        if step == 1:  # the history's (larger) scale, not this gradient's
            assert (fast[0].scale > quantize_grad_output_reference(g, *specs, weight_scale, input_scale)[0].scale).all()
            assert history_fast[5] == 1  # only the first call fell back so far
        if step == 4:  # the history keeps the last finite maxima
            assert torch.isfinite(history_fast).all()
    with pytest.raises(ValueError, match=r"amax_margin must be an integer in \[0, 8\] \(--fp4-grad-amax-margin\), got 9"):
        quantize_grad_folded(g, *specs, weight_scale, input_scale, amax_history=history_fast, amax_margin=9)
    with pytest.raises(ValueError, match=r"amax_history must be a contiguous float32 \[8\] tensor .*new_grad_amax_state"):
        quantize_grad_folded(g, *specs, weight_scale, input_scale, amax_history=torch.zeros(2, device=DEVICE))  # a [2] history of earlier versions


@pytest.mark.skipif(DEVICE != "cuda", reason="thousands of concurrent programs: the GPU's case (the interpreter runs programs one by one)")
def test_delayed_state_is_exact_when_thousands_of_programs_race():
    """The running maxima (atomic max of their bits) and the finalisation ticket under real
    concurrency: 2752 quantize programs and 264 finalisation programs per call, 24 calls whose
    magnitudes rise and fall (about half take the fallback), each against the reference bit for
    bit, the state included (scratch zero again after every call)."""
    m, n = 4096, 11008
    generator = torch.Generator(device=DEVICE).manual_seed(11)
    weight_scale = torch.rand(n, generator=generator, device=DEVICE) * 0.1 + 1e-3
    input_scale = torch.rand(m, generator=generator, device=DEVICE) * 10 + 1e-2
    state_fast, state_reference = new_grad_amax_state(DEVICE), new_grad_amax_state(DEVICE)
    fallbacks = 0
    for step in range(24):
        g = (torch.randn(m, n, generator=generator, device=DEVICE) * 2.0 ** torch.randint(-3, 4, (), generator=generator, device=DEVICE).item()).to(torch.bfloat16)
        before = state_reference[:2].clone()
        fast = quantize_grad_folded(g, E5M2, E5M2, weight_scale, input_scale, amax_history=state_fast)
        reference = quantize_grad_output_delayed_reference(g, E5M2, E5M2, weight_scale, input_scale, state_reference)
        for a, b in zip(fast, reference):
            assert torch.equal(bits(a), bits(b)) and torch.equal(a.scale, b.scale), step
        assert torch.equal(state_fast, state_reference), step
        fallbacks += int((state_reference[:2] > before).any())
    assert 4 <= fallbacks <= 20  # both branches ran


@pytest.mark.parametrize("spec, top, edges", [
    (E5M2, 57344.0, [1.125, 1.375, -1.125, 2.0**-16, 2.0**-17, 3 * 2.0**-17, 2.0**-14 * 0.875, 2.0**-14 * 0.9375]),
    (E4M3, 448.0, [1.0625, 1.1875, -1.0625, 2.0**-9, 2.0**-10, 3 * 2.0**-10, 2.0**-6 * 0.9375, 2.0**-6 * 0.96875]),
])
def test_fp8_rounding_edges_match_torch(spec, top, edges):
    """Ties to even (normal and subnormal), the subnormal/normal boundary, signed zero: the
    row's amax is the format's max, so the tensor scale is 1 and these values are rounded as is."""
    row = torch.tensor([top, *edges, 0.0, -0.0, -top])
    g = row.repeat(16, 1).to(DEVICE)
    fast, _ = quantize_grad_folded(g, spec, spec, None, None)
    reference, _ = quantize_grad_output_reference(g, spec, spec, None, None)
    assert float(reference.scale) == 1.0
    assert torch.equal(bits(fast), bits(reference))


@pytest.mark.parametrize("bad", [float("inf"), -float("inf"), float("nan")])
def test_non_finite_gradient_gives_nan_scale(bad):
    """One non-finite entry anywhere (here in the last of several amax tiles) makes both tensor
    scales NaN: the NaN-propagating maximum carries it through the partial maxima."""
    g = torch.randn(70, 300, device=DEVICE)
    g[69, 299] = bad
    dgrad, wgrad = quantize_grad_folded(g, E5M2, E5M2, None, None, amax_tile=(32, 128))
    assert torch.isnan(dgrad.scale).all() and torch.isnan(wgrad.scale).all() and torch.isnan(wgrad.dequantize_2d()).all()
    fine = quantize_grad_folded(torch.randn(70, 300, device=DEVICE), E5M2, E5M2, None, None, amax_tile=(32, 128))[0]
    assert torch.isfinite(fine.scale).all()


@pytest.mark.parametrize("shape", [(64, 128), (50, 70), (130, 34)] if DEVICE == "cpu" else [(64, 128), (4096, 4096), (11008, 4096), (1000, 2050)])
def test_codes_to_fp8_transposed_is_bit_exact(shape):
    codes = quantize(torch.randn(*shape, device=DEVICE), QuantSpec("fp4", "row")).data
    fast, reference = codes_to_fp8_t(codes), codes_to_fp8_t_reference(codes)
    assert fast.shape == (shape[1], shape[0]) and fast.is_contiguous()
    assert torch.equal(fast.view(torch.uint8), reference.view(torch.uint8))


@pytest.mark.parametrize("shape", [(16, 96), (40, 1030)] if DEVICE == "cpu" else [(16, 96), (4096, 4096), (11008, 4096)])
def test_dge_weight_gradient_within_16_ulp(shape):
    weight = torch.randn(*shape, device=DEVICE) * 0.05
    scale = quantize(weight, QuantSpec("fp4", "row")).decode_scale()
    weight[0, :3] = scale[0, 0] * torch.tensor([0.25, 2.5, 6.0], device=DEVICE)  # midpoints (clamped) and the top
    grad = torch.randn(*shape, device=DEVICE)
    reference = dge_scale_grad_reference(grad, weight, scale, 5.0, 3.0)
    fast = dge_scale_grad(grad.clone(), weight, scale, 5.0, 3.0)
    ulp = torch.finfo(torch.float32).eps * reference.abs()
    assert ((fast - reference).abs() <= 16 * ulp).all()
    written_bf16 = dge_scale_grad(grad.clone(), weight, scale, 5.0, 3.0, out_dtype=torch.bfloat16)
    assert written_bf16.dtype == torch.bfloat16
    assert ((written_bf16.float() - reference).abs() <= reference.abs() * 2**-8).all()  # one bf16 rounding
    weight[1, 1] = float("nan")
    assert torch.isnan(dge_scale_grad(grad.clone(), weight, scale, 5.0, 3.0)[1, 1])


@pytest.mark.skipif(DEVICE == "cpu", reason="the interpreter has no FP8 conversion instruction")
@pytest.mark.parametrize("specs", [(E5M2, E5M2), (E4M3, E5M2)])
def test_hardware_and_integer_fp8_casts_agree(specs):
    """The compiled default (cvt instruction) and the integer construction write the same bytes."""
    g = (torch.randn(2048, 1536) * torch.logspace(-6, 2, 2048)[:, None]).to(DEVICE)
    scales = torch.rand(1536, device=DEVICE) + 1e-3, torch.rand(2048, device=DEVICE) * 3
    for hardware, integer in zip(quantize_grad_folded(g, *specs, *scales, hardware_cast=True), quantize_grad_folded(g, *specs, *scales, hardware_cast=False)):
        assert torch.equal(bits(hardware), bits(integer))
