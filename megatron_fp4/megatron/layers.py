"""FP4 tensor-parallel linear layers: megatron-core's Column/RowParallelLinear with FP4 GEMMs.

Everything but the GEMMs stays megatron-core's: sharding and initialisation, ``gather_output``,
``input_is_parallel``, ``skip_bias_add``, the sequence-parallel all-gather / reduce-scatter, the
tensor-parallel all-reduce of the input gradient (overlapped with the weight-gradient GEMM, as
upstream), gradient-accumulation fusion into ``main_grad``, and ``sharded_state_dict``. Only
``_forward_impl``, the local GEMM upstream runs between its communication, is replaced.

Scales under tensor parallelism (paper §3 vector-wise scaling):
* ColumnParallel shards W by output channel and sees the whole input, so per-token and
  per-channel scales are the ones TP=1 computes and the forward equals TP=1. In backward each
  rank's slice of dY gets its own (tensor-wise FP8) scale before the all-reduce of dX.
* RowParallel shards the reduction dimension K. Each rank quantizes its own shard: per-token
  scales from the rank's K/TP slice of each token, per-output-channel scales from its slice of
  each weight row, OCC thresholds from its shard. The partial products are dequantized (fp32,
  then the activation dtype) and summed by megatron-core's all-reduce / reduce-scatter. So TP>1
  differs from TP=1 only by quantizing with finer (shard-local) scales.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.tensor_parallel import mappings
from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear

from ..backward import new_grad_amax_state
from ..fused_inputs import rms_norm_backward, rms_norm_fusable, swiglu_backward, swiglu_fusable
from ..gemm import get_backend
from ..linear import FP4GemmState
from ..recipe import FP4Recipe

__all__ = ["FP4ColumnParallelLinear", "FP4RowParallelLinear", "FP4ParallelLinearFunction"]


def _all_gather_first_dim(tensor: torch.Tensor, group) -> torch.Tensor:
    chunks = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(chunks, tensor.contiguous(), group=group)
    return torch.cat(chunks, dim=0)


class FP4ParallelLinearFunction(torch.autograd.Function):
    """Megatron's linear-with-async-communication, with the recipe's FP4 GEMMs inside."""

    NORM_WEIGHT_INPUT = 12  # the position of ``norm_weight`` among forward's inputs (after ctx)

    @staticmethod
    def forward(
        ctx, input, weight, bias, recipe, backend, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, tp_group, name="linear", swiglu=False,
        grad_amax_history=None, norm_weight=None, norm_eps=None,
    ):
        """swiglu: ``input`` is the SwiGLU pre-activation [..., 2K] and the layer computes
        swiglu(input) W^T, the activation quantized where it is computed (no communication in
        this form: it is RowParallel fc2's, whose input is already parallel). norm_weight,
        norm_eps: ``input`` is the residual stream x and the layer computes RMSNorm(x) W^T
        (ColumnParallel QKV / fc1: with sequence parallelism x is gathered, not its norm; the
        norm's backward runs on each rank's own rows once dX is reduced)."""
        if swiglu and (sequence_parallel or allreduce_dgrad):
            raise ValueError(f"{name}: the SwiGLU-input form has no sequence-parallel gather or dgrad all-reduce (RowParallel fc2 only)")
        total_input = _all_gather_first_dim(input, tp_group) if sequence_parallel else input
        state = FP4GemmState(recipe, backend, name, grad_amax_history)
        norm = (norm_weight, norm_eps) if norm_weight is not None else None
        output = state.forward(total_input.reshape(-1, total_input.shape[-1]), weight, torch.float32 if bias is not None else input.dtype, swiglu=swiglu, norm=norm)
        if bias is not None:
            output = output + bias.float()
        rstd = None
        if norm is not None:  # this rank's rows of the gathered sequence keep their 1/rms for the norm's backward
            rstd = state.norm_rstd.view(dist.get_world_size(tp_group), -1)[dist.get_rank(tp_group)] if sequence_parallel else state.norm_rstd
            state.norm_rstd = None
        ctx.state, ctx.tp_group = state, tp_group
        ctx.flags = (gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, bias is not None, swiglu, norm is not None)
        ctx.shapes = (input.shape, total_input.shape, input.dtype)
        # SwiGLU's and RMSNorm's backward need their input, as upstream's
        ctx.save_for_backward(weight, input if swiglu or norm is not None else None, norm_weight, rstd)
        return output.to(input.dtype).reshape(*total_input.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output):
        weight, pre_activation, norm_weight, rstd = ctx.saved_tensors
        state: FP4GemmState = ctx.state
        accumulate_in_main_grad, allreduce_dgrad, sequence_parallel, use_bias, swiglu, normed = ctx.flags
        input_shape, total_shape, dtype = ctx.shapes
        g2d = grad_output.reshape(-1, grad_output.shape[-1])
        gq_dgrad, gq_wgrad = state.quantize_grad_output(g2d)

        grad_input, handle = None, None
        if ctx.needs_input_grad[0] or (normed and ctx.needs_input_grad[FP4ParallelLinearFunction.NORM_WEIGHT_INPUT]):  # the norm's weight gradient needs dX too
            if swiglu:  # d swiglu(A) from the GEMM, then dA through SwiGLU's backward
                grad_input = swiglu_backward(state.grad_input(gq_dgrad, dtype), pre_activation.reshape(-1, total_shape[-1])).reshape(total_shape)
            else:
                grad_input = state.grad_input(gq_dgrad, dtype).reshape(total_shape)
            if allreduce_dgrad:  # overlaps with the weight-gradient GEMM below
                handle = dist.all_reduce(grad_input, group=ctx.tp_group, async_op=True)
            elif sequence_parallel:
                full, grad_input = grad_input, torch.empty(input_shape, dtype=dtype, device=grad_input.device)
                handle = mappings.dist_reduce_scatter_func(grad_input, full, group=ctx.tp_group, async_op=True)
        gq_dgrad = None  # dgrad's operand (with its BF16 form) freed before wgrad's is made

        grad_weight = None
        if ctx.needs_input_grad[1]:
            into_main_grad = accumulate_in_main_grad and hasattr(weight, "main_grad")
            grad_w = state.grad_weight(gq_wgrad, weight, g2d, weight.main_grad.dtype if into_main_grad else weight.dtype)
            if into_main_grad:
                weight.main_grad.add_(grad_w)
                if hasattr(weight, "grad_added_to_main_grad"):  # megatron DDP's convention
                    weight.grad_added_to_main_grad = True
                    grad_weight = torch.zeros_like(weight) if getattr(weight, "zero_out_wgrad", False) else torch.empty_like(weight)
            else:
                grad_weight = grad_w
        grad_bias = g2d.float().sum(0).to(grad_output.dtype) if use_bias and ctx.needs_input_grad[2] else None
        if handle is not None:
            handle.wait()
        grad_norm_weight = None
        if normed:  # dX of RMSNorm(x) on this rank's rows, now reduced: back through the norm
            grad_x, grad_norm_weight = rms_norm_backward(grad_input.reshape(-1, input_shape[-1]), pre_activation.reshape(-1, input_shape[-1]), norm_weight, rstd)
            grad_input = grad_x.reshape(input_shape)
        state.release()
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None, None, None, grad_norm_weight, None


def norm_eps(norm: torch.nn.RMSNorm, dtype: torch.dtype) -> float:
    """The epsilon torch's RMSNorm uses: its own, or the input dtype's machine epsilon if None."""
    return float(norm.eps) if norm.eps is not None else torch.finfo(dtype).eps


class _FP4LinearMixin:
    """The recipe lookup and the replacement of megatron-core's local GEMM."""

    def _init_fp4(self, config, fp4_recipe: FP4Recipe | None, local_k: int) -> None:
        self.fp4_recipe = fp4_recipe or getattr(config, "fp4_quant_recipe", None) or FP4Recipe.paper()
        self.fp4_name = type(self).__name__  # the model builder sets the module path (health logs)
        if not hasattr(self, "fp4_grad_amax"):  # delayed output-gradient scaling's state (recipe.grad_amax);
            # not checkpointed: a resumed run starts from zeros, whose first backward takes the current scales.
            # (Placed on the GEMM's device at the first forward: the weight may be shared or not yet placed.)
            self.register_buffer("fp4_grad_amax", new_grad_amax_state(), persistent=False)
        for operand in ("fprop_input", "fprop_weight"):
            block = getattr(self.fp4_recipe, operand).block_size
            if block and local_k % block:
                raise ValueError(
                    f"{type(self).__name__}: --fp4-recipe {self.fp4_recipe.name} blocks of {block} do not divide "
                    f"this rank's reduction size {local_k}"
                )

    def _forward_impl(self, input, weight, bias, gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, grad_output_buffer=None, wgrad_deferral_limit=None, tp_group=None, **kwargs):
        if not self.fp4_recipe.changes_linear:  # `bf16`: megatron-core's own path, bit for bit
            return super()._forward_impl(
                input=input, weight=weight, bias=bias, gradient_accumulation_fusion=gradient_accumulation_fusion,
                allreduce_dgrad=allreduce_dgrad, sequence_parallel=sequence_parallel,
                grad_output_buffer=grad_output_buffer, wgrad_deferral_limit=wgrad_deferral_limit, tp_group=tp_group, **kwargs,
            )
        if grad_output_buffer is not None:
            raise ValueError(f"{type(self).__name__}: --defer-embedding-wgrad-compute is not supported by FP4 layers")
        if self.fp4_grad_amax.device != weight.device:  # once, before any CUDA-graph warm-up
            self.fp4_grad_amax = new_grad_amax_state(weight.device)
        norm = getattr(self, "_fused_rms_norm", None)  # (RMSNorm module,): ``megatron.fused_norm``
        return FP4ParallelLinearFunction.apply(
            input, weight, bias, self.fp4_recipe, get_backend(),
            gradient_accumulation_fusion, allreduce_dgrad, sequence_parallel, tp_group, self.fp4_name,
            getattr(self, "_input_is_swiglu_pre_activation", False), self.fp4_grad_amax,
            *((norm[0].weight, norm_eps(norm[0], input.dtype)) if norm else ()),
        )

    def extra_repr_fp4(self) -> str:
        return f"fp4_recipe={self.fp4_recipe.name}"


class FP4ColumnParallelLinear(_FP4LinearMixin, ColumnParallelLinear):
    """ColumnParallelLinear (W sharded by output channel) whose GEMMs follow an FP4Recipe."""

    def __init__(self, input_size, output_size, *, config, init_method, fp4_recipe: FP4Recipe | None = None, **kwargs):
        super().__init__(input_size, output_size, config=config, init_method=init_method, **kwargs)
        self._init_fp4(config, fp4_recipe, input_size)

    @classmethod
    def convert(cls, layer: ColumnParallelLinear, recipe: FP4Recipe) -> "FP4ColumnParallelLinear":
        """Turn an existing ColumnParallelLinear (e.g. GPTModel's output layer) into an FP4 one in place."""
        if not isinstance(layer, ColumnParallelLinear):
            raise TypeError(f"expected a ColumnParallelLinear, got {type(layer).__name__}")
        layer.__class__ = cls
        layer._init_fp4(layer.config, recipe, layer.input_size)
        return layer

    def takes_rms_norm_input(self, hidden: int) -> bool:
        """Whether this layer can take RMSNorm(x) from x, quantizing the norm's output where it is
        computed (``megatron.fused_norm``)."""
        return self.fp4_recipe.changes_linear and rms_norm_fusable(self.fp4_recipe, hidden)

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", {self.extra_repr_fp4()})"


class FP4RowParallelLinear(_FP4LinearMixin, RowParallelLinear):
    """RowParallelLinear (K sharded) whose GEMMs follow an FP4Recipe; each rank scales its shard."""

    def __init__(self, input_size, output_size, *, config, init_method, fp4_recipe: FP4Recipe | None = None, **kwargs):
        super().__init__(input_size, output_size, config=config, init_method=init_method, **kwargs)
        self._init_fp4(config, fp4_recipe, self.input_size_per_partition)

    @property
    def takes_swiglu_pre_activation(self) -> bool:
        """Whether ``forward_swiglu`` quantizes inside the SwiGLU for this layer's recipe (else it
        still works, through the activation written out)."""
        return self.fp4_recipe.changes_linear and self.input_is_parallel and swiglu_fusable(self.fp4_recipe)

    def forward_swiglu(self, pre_activation):
        """``forward(swiglu(pre_activation))`` (megatron-core's forward: its reduction, bias and
        outputs), with the activation computed and quantized inside this layer's FP4 input
        quantizer instead of written by a separate SwiGLU kernel (``megatron_fp4.fused_inputs``)."""
        if not self.takes_swiglu_pre_activation:
            raise ValueError(f"{self.fp4_name}: --fp4-recipe {self.fp4_recipe.name} cannot quantize inside the SwiGLU")
        self._input_is_swiglu_pre_activation = True
        try:
            return self(pre_activation)
        finally:
            self._input_is_swiglu_pre_activation = False

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f", {self.extra_repr_fp4()})"
