"""TP=2 jobs checking the FP4 parallel layers against local FP4 linears on the same shards."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_fp4.linear import fp4_linear
from megatron_fp4.megatron import FP4ColumnParallelLinear, FP4RowParallelLinear
from megatron_fp4.quantize import QuantSpec
from megatron_fp4.recipe import get_recipe

from .dist_harness import device


def _inputs(tokens, k, n):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(tokens, 1, k, generator=g)
    x[..., :3] *= 25  # outlier channels for OCC
    return x.to(device()), (torch.randn(n, k, generator=g) * 0.1).to(device()), torch.randn(tokens, 1, n, generator=g).to(device())


def sharded_layers_job(recipe_name: str) -> dict:
    """Column- and row-parallel outputs and input gradients vs local FP4 linears on the shards."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    recipe = get_recipe(recipe_name)
    if recipe.dgrad_grad_output.stochastic_rounding:  # the two computations would draw differently
        recipe = recipe.replace(dgrad_grad_output=QuantSpec("fp4", "nvfp4"), wgrad_grad_output=QuantSpec("fp4", "nvfp4"))
    config = TransformerConfig(num_layers=1, hidden_size=64, num_attention_heads=4, use_cpu_initialization=True, tensor_model_parallel_size=tp)
    k, n, tokens = 64, 96, 32  # tokens: a multiple of 16 (nvfp4's Hadamard transform along the tokens)
    x, w, grad = _inputs(tokens, k, n)
    init = torch.nn.init.zeros_
    out = {}

    column = FP4ColumnParallelLinear(k, n, config=config, init_method=init, bias=False, gather_output=True, fp4_recipe=recipe).to(device())
    with torch.no_grad():
        column.weight.copy_(w.chunk(tp, dim=0)[rank])
    xc = x.clone().requires_grad_()
    y, _ = column(xc)
    y.backward(grad)
    # each rank's W rows keep their per-channel scales; its slice of dY gets its own FP8 scale, and
    # megatron's all-reduce sums the ranks' input gradients
    xr = x.clone().requires_grad_()
    parts = [fp4_linear(xr, ws, None, recipe) for ws in w.chunk(tp, dim=0)]
    for part, g in zip(parts, grad.chunk(tp, dim=-1)):
        part.backward(g)
    y_ref = torch.cat(parts, dim=-1)
    out["column"] = (y.detach().cpu(), y_ref.detach().cpu(), xc.grad.cpu(), xr.grad.cpu())

    row = FP4RowParallelLinear(k, n, config=config, init_method=init, bias=False, input_is_parallel=True, skip_bias_add=False, fp4_recipe=recipe).to(device())
    with torch.no_grad():
        row.weight.copy_(w.chunk(tp, dim=1)[rank])
    x_shards = [s.clone().requires_grad_() for s in x.chunk(tp, dim=-1)]
    mine = x_shards[rank].detach().clone().requires_grad_()
    y, _ = row(mine)
    y.backward(grad)
    # each rank scales its own K shard; the partial products are summed after dequantization
    y_ref = sum(fp4_linear(xs, ws, None, recipe) for xs, ws in zip(x_shards, w.chunk(tp, dim=1)))
    y_ref.backward(grad)
    out["row"] = (y.detach().cpu(), y_ref.detach().cpu(), mine.grad.cpu(), x_shards[rank].grad.cpu())
    return out


def fused_swiglu_mlp_job(recipe_names: list[str]) -> dict:
    """Per recipe: FP4MLP with fc2 quantizing inside the SwiGLU vs the same modules with the
    activation written out (``fused_inputs.swiglu_reference``) and autograd through it; and which
    configurations fuse at all."""
    return {name: _fused_swiglu_mlp(name) for name in recipe_names}


def _fused_swiglu_mlp(recipe_name: str) -> dict:
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    from megatron.core.transformer.spec_utils import build_module

    from megatron_fp4.fused_inputs import swiglu_reference
    from megatron_fp4.megatron import FP4TransformerConfig, to_fp4_spec
    from megatron_fp4.megatron.mlp import FP4MLP

    tp = parallel_state.get_tensor_model_parallel_world_size()
    recipe = get_recipe(recipe_name)
    fields = dict(
        num_layers=1, hidden_size=64, num_attention_heads=4, ffn_hidden_size=192, use_cpu_initialization=True,
        tensor_model_parallel_size=tp, gated_linear_unit=True, activation_func=torch.nn.functional.silu, add_bias_linear=False,
        bias_activation_fusion=True, params_dtype=torch.bfloat16, bf16=True, fp4_quant_recipe=recipe,
    )
    mlp_spec = to_fp4_spec(get_gpt_layer_local_spec()).submodules.mlp
    torch.manual_seed(5)
    mlp = FP4MLP.convert(build_module(mlp_spec, config=FP4TransformerConfig(**fields), ffn_hidden_size=192).to(device()))
    unfused = FP4MLP.convert(build_module(mlp_spec, config=FP4TransformerConfig(**fields, fp4_quantize_fusion=False), ffn_hidden_size=192))
    out = {"fused": isinstance(mlp, FP4MLP), "fused_without_flag": isinstance(unfused, FP4MLP),
           "grad_amax_history": [tuple(layer.fp4_grad_amax.shape) for layer in (mlp.linear_fc1, mlp.linear_fc2)]}
    if not out["fused"]:
        return out
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(64, 1, 64, generator=g) * 2).to(torch.bfloat16).to(device())
    x[..., :2] *= 20  # outlier channels for OCC
    grad = torch.randn(64, 1, 64, generator=g).to(torch.bfloat16).to(device())

    def run(fused: bool):
        mlp.zero_grad(set_to_none=True)
        xi = x.clone().requires_grad_()
        if fused:
            y, _ = mlp(xi)
        else:
            pre, _ = mlp.linear_fc1(xi)
            y, _ = mlp.linear_fc2(swiglu_reference(pre))
        y.backward(grad)
        return [y.detach().float().cpu(), xi.grad.float().cpu(), mlp.linear_fc1.weight.grad.float().cpu(), mlp.linear_fc2.weight.grad.float().cpu()]

    out["fused_run"], out["reference_run"] = run(True), run(False)
    return out


def fused_rms_norm_job(recipe_names: list[str]) -> dict:
    """Per recipe: an FP4 ColumnParallel linear computing the RMSNorm before it
    (``megatron.fused_norm``) vs the norm written out (``rms_norm_reference``, autograd through it)
    then the same linear, at TP=2 without and with sequence parallelism (x gathered, not its norm;
    the norm's backward on each rank's rows after dX is reduced)."""
    return {name: _fused_rms_norm(name) for name in recipe_names}


def _fused_rms_norm(recipe_name: str) -> dict:
    from megatron_fp4.fused_inputs import rms_norm_reference, rms_rstd_reference
    from megatron_fp4.megatron import SequenceParallelNorm
    from megatron_fp4.megatron.fused_norm import FusedIntoLinearRMSNorm

    tp = parallel_state.get_tensor_model_parallel_world_size()
    rank = parallel_state.get_tensor_model_parallel_rank()
    recipe = get_recipe(recipe_name)
    out = {}
    for sequence_parallel in (False, True):
        config = TransformerConfig(
            num_layers=1, hidden_size=64, num_attention_heads=4, use_cpu_initialization=True, tensor_model_parallel_size=tp,
            sequence_parallel=sequence_parallel, normalization="RMSNorm",
        )
        norm = SequenceParallelNorm(config, 64, eps=1e-5).to(device())
        with torch.no_grad():
            norm.weight.copy_(1 + 0.2 * torch.randn(64, generator=torch.Generator().manual_seed(4)))
        linear = FP4ColumnParallelLinear(64, 96, config=config, init_method=torch.nn.init.zeros_, bias=False, gather_output=False, fp4_recipe=recipe).to(device())
        x, w, grad = _inputs(32, 64, 96)
        with torch.no_grad():
            linear.weight.copy_(w.chunk(tp, dim=0)[rank])
        x_local = x.chunk(tp, dim=0)[rank] if sequence_parallel else x
        grad_local = grad.chunk(tp, dim=2)[rank]

        def run(fused: bool):
            norm.zero_grad(set_to_none=True)
            linear.zero_grad(set_to_none=True)
            xi = x_local.clone().requires_grad_()
            if fused:
                norm.__class__ = FusedIntoLinearRMSNorm
                linear._fused_rms_norm = (norm,)
                y, _ = linear(norm(xi))
                norm.__class__, linear._fused_rms_norm = torch.nn.RMSNorm, None
            else:
                x2d = xi.reshape(-1, 64)
                y, _ = linear(rms_norm_reference(x2d, norm.weight, rms_rstd_reference(x2d, 1e-5)).reshape(xi.shape))
            y.backward(grad_local)
            return [t.detach().float().cpu() for t in (y, xi.grad, norm.weight.grad, linear.weight.grad)]

        out[f"sp={sequence_parallel}"] = {"fused_run": run(True), "reference_run": run(False), "sequence_parallel_mark": getattr(norm.weight, "sequence_parallel", None)}
    return out
