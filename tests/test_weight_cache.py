"""Weights quantized once per optimizer step: inside ``step_scope`` every micro-batch reuses the
first quantization, results are bit-identical to quantizing each time, and nothing is cached
outside a scope or across an in-place change."""

import pytest
import torch

from megatron_fp4 import linear, weight_cache


@pytest.fixture(autouse=True)
def _cache_on(monkeypatch):
    """The cache is opt-in (memory); these tests are about what it does when on."""
    monkeypatch.setenv("MEGATRON_FP4_WEIGHT_CACHE", "1")
from megatron_fp4.linear import fp4_linear
from megatron_fp4.recipe import FP4Recipe


def _count_weight_quantizations(monkeypatch) -> list:
    calls = []
    original = linear._quantize_pair

    def counting(tensor, *args, **kwargs):
        calls.append(tensor.shape)
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(linear, "_quantize_pair", counting)
    return calls


def _micro_batches(w, recipe, count=3):
    outputs, grads = [], []
    for index in range(count):
        x = (torch.randn(32, 64, generator=torch.Generator().manual_seed(index)) * 2).requires_grad_()
        y = fp4_linear(x, w, None, recipe)
        (gx,) = torch.autograd.grad(y.square().sum(), (x,))
        outputs.append(y.detach())
        grads.append(gx)
    return outputs, grads, w.grad


def test_one_quantization_per_step_and_the_same_results(monkeypatch):
    calls = _count_weight_quantizations(monkeypatch)
    w = (torch.randn(48, 64) * 0.1).requires_grad_()
    for recipe in (FP4Recipe.paper(), FP4Recipe.direct()):
        calls.clear()
        uncached = _micro_batches(w, recipe)
        assert len(calls) == 3
        calls.clear()
        with weight_cache.step_scope():
            cached = _micro_batches(w, recipe)
            fp8_compensation = recipe.occ.enabled and recipe.occ.compensate and recipe.occ.compensation == "fp8"
            assert weight_cache.entries() == (2 if fp8_compensation else 1)  # + W's E4M3 form for the FP8 residual GEMM
        assert len(calls) == 1 and weight_cache.entries() == 0
        for a, b in zip(uncached[0] + uncached[1], cached[0] + cached[1]):
            assert torch.equal(a, b)


def test_a_changed_weight_is_quantized_again(monkeypatch):
    calls = _count_weight_quantizations(monkeypatch)
    w = (torch.randn(48, 64) * 0.1).requires_grad_()
    recipe = FP4Recipe.direct()
    x = torch.randn(32, 64)
    with weight_cache.step_scope():
        before = fp4_linear(x, w, None, recipe)
        with torch.no_grad():
            w.add_(0.05)  # in place: the version counter moves, the cache misses
        after = fp4_linear(x, w, None, recipe)
    assert len(calls) == 2 and not torch.equal(before, after)
    with weight_cache.step_scope():  # a new step after the optimizer wrote through .data
        w.data.mul_(2)
        fresh = fp4_linear(x, w, None, recipe)
    assert torch.equal(fresh, fp4_linear(x, w, None, recipe))  # outside a scope: uncached, equal


def test_the_cache_is_off_by_default_and_by_the_switch(monkeypatch):
    from megatron_fp4 import weight_cache

    monkeypatch.delenv("MEGATRON_FP4_WEIGHT_CACHE")
    assert not weight_cache.enabled()
    monkeypatch.setenv("MEGATRON_FP4_WEIGHT_CACHE", "0")
    calls = []
    weight = torch.randn(4, 4)
    with weight_cache.step_scope():
        for _ in range(3):
            weight_cache.cached(weight, "key", lambda: calls.append(1))
    assert len(calls) == 3
