"""The fused RoPE kernel against its PyTorch reference, an fp64 evaluation and megatron-core's own
unfused RoPE (forward and autograd backward).

On CPU the kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``); on a GPU compiled.
"""

import os

import pytest
import torch

triton = pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1", allow_module_level=True)

from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd  # noqa: E402

from megatron_fp4.kernels.rope import cos_sin, rope_reference, rope_triton  # noqa: E402
from megatron_fp4.megatron import rope  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (sequence, batch, heads, head dim): GQA-like head counts that are not powers of two, a head dim whose half is not one
SHAPES = [(5, 2, 3, 8), (7, 1, 12, 96), (4, 3, 2, 128)] if DEVICE == "cpu" else [(2048, 2, 32, 128), (1024, 4, 8, 128), (333, 3, 12, 96)]


def angles(s: int, d: int) -> torch.Tensor:
    """megatron-core's layout: [s, 1, 1, d], the two halves equal (inverse frequencies as RotaryEmbedding's)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    freqs = torch.outer(torch.arange(s, dtype=torch.float32), inv_freq)
    return torch.cat((freqs, freqs), dim=-1)[:, None, None, :].to(DEVICE)


def exact(t: torch.Tensor, freqs: torch.Tensor, backward: bool) -> torch.Tensor:
    """fp64 evaluation of the forward rotation (or its transpose) of t."""
    x = t.double()
    half = x.shape[-1] // 2
    f = freqs.double()
    c, n = torch.cos(f), torch.sin(f)
    x1, x2 = x[..., :half], x[..., half:]
    if backward:
        return torch.cat((x1 * c[..., :half] + x2 * n[..., half:], x2 * c[..., half:] - x1 * n[..., :half]), dim=-1)
    return torch.cat((x1 * c[..., :half] - x2 * n[..., :half], x2 * c[..., half:] + x1 * n[..., half:]), dim=-1)


def within_ulps(a: torch.Tensor, b: torch.Tensor, ulps: float, dtype: torch.dtype) -> bool:
    """|a - b| <= ulps units in the last place of b in dtype (bf16: 2^-7 relative to the binade; a tiny absolute floor)."""
    relative = {torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23}[dtype]
    return bool(((a.double() - b.double()).abs() <= ulps * relative * b.double().abs() + 1e-30).all())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("backward", [False, True])
def test_kernel_matches_reference(shape, backward):
    s, b, h, d = shape
    t = torch.randn(shape, device=DEVICE).to(torch.bfloat16)
    cos, sin = cos_sin(angles(s, d))
    fast, reference = rope_triton(t, cos, sin, backward), rope_reference(t, cos, sin, backward)
    if DEVICE == "cpu":
        assert torch.equal(fast, reference)  # the interpreter computes the same fp32 operations
    else:  # the compiled kernel may contract a multiply-add into an FMA: the two fp32 evaluations
        # differ by at most 2^-23 of the terms' magnitudes (more than a bf16 ulp of a result that
        # cancels), then each rounds to bf16: one bf16 ulp more
        x = t.double().abs()
        half = d // 2
        terms = torch.cat((x[..., :half] + x[..., half:],) * 2, dim=-1)
        difference = (fast.double() - reference.double()).abs()
        assert bool((difference <= 2.0**-7 * reference.double().abs() + 2.0**-22 * terms).all())


@pytest.mark.parametrize("backward", [False, True])
def test_one_rounding_from_exact(backward):
    """Half a bf16 ulp from the fp64 result, plus the fp32 evaluation's error (a few 2^-24 of the
    terms' magnitudes); megatron-core's unfused bf16 path, which rounds cos/sin and each product,
    is further from it on average."""
    s, b, h, d = SHAPES[-1]
    t = torch.randn(SHAPES[-1], device=DEVICE).to(torch.bfloat16)
    freqs = angles(s, d)
    truth = exact(t, freqs, backward)
    fast = rope_triton(t, *cos_sin(freqs), backward)
    magnitude = t.double().abs()
    half = d // 2
    terms = torch.cat((magnitude[..., :half] + magnitude[..., half:],) * 2, dim=-1)
    assert bool(((fast.double() - truth).abs() <= 2.0**-8 * truth.abs() + 2.0**-20 * terms).all())
    if not backward:
        unfused = _apply_rotary_pos_emb_bshd(t, freqs)
        assert (fast.double() - truth).abs().mean() < (unfused.double() - truth).abs().mean()


def test_strided_input_equals_contiguous():
    """q and k arrive as views into the QKV projection's output."""
    s, b, h, d = SHAPES[0]
    qkv = torch.randn(s, b, 3 * h, d, device=DEVICE).to(torch.bfloat16)
    query = qkv[:, :, h : 2 * h]
    assert not query.is_contiguous()
    cos, sin = cos_sin(angles(s, d))
    assert torch.equal(rope_triton(query, cos, sin), rope_triton(query.contiguous(), cos, sin))


@pytest.mark.parametrize("shape", SHAPES[:2])
def test_autograd_matches_megatron_core_in_fp32(shape):
    """fused_rope's forward and backward against autograd through megatron-core's unfused RoPE,
    both in fp32 (the backward formula is checked independently of ours; fp32 rounding only)."""
    s, b, h, d = shape
    freqs = angles(s, d)
    t = torch.randn(shape, device=DEVICE, requires_grad=True)
    t_ref = t.detach().clone().requires_grad_(True)
    grad = torch.randn(shape, device=DEVICE)
    ours = rope.fused_rope(t, freqs)
    theirs = _apply_rotary_pos_emb_bshd(t_ref, freqs)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    ours.backward(grad)
    theirs.backward(grad)
    torch.testing.assert_close(t.grad, t_ref.grad, rtol=1e-5, atol=1e-5)


def test_other_layouts_take_megatron_core_path():
    """Interleaved rotation and partial rotary dimensions are megatron-core's unfused code, exactly."""
    s, b, h, d = SHAPES[0]
    t = torch.randn(s, b, h, d, device=DEVICE).to(torch.bfloat16)
    freqs = angles(s, d)
    assert torch.equal(rope.fused_rope(t, freqs, interleaved=True), _apply_rotary_pos_emb_bshd(t, freqs, rotary_interleaved=True))
    partial = angles(s, d // 2)
    assert torch.equal(rope.fused_rope(t, partial), _apply_rotary_pos_emb_bshd(t, partial))


def test_install_enables_megatron_core_rope_fusion(monkeypatch):
    from megatron.core.models.common.embeddings import rope_utils
    from megatron.core.transformer.transformer_config import TransformerConfig

    monkeypatch.setattr(rope_utils, "fused_apply_rotary_pos_emb", None)
    with pytest.raises(ValueError, match="apply_rope_fusion is not available"):
        TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, apply_rope_fusion=True)
    assert rope.install() and rope.installed()
    config = TransformerConfig(num_layers=1, hidden_size=8, num_attention_heads=2, apply_rope_fusion=True)
    s, b, h, d = SHAPES[0]
    t = torch.randn(s, b, h, d, device=DEVICE).to(torch.bfloat16)
    freqs = angles(s, d)
    cp_group = object()  # a placeholder: only the packed-sequence path would use it
    assert torch.equal(rope_utils.apply_rotary_pos_emb(t, freqs, config, cp_group=cp_group), rope.fused_rope(t, freqs))
