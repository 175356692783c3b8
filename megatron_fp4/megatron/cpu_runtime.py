"""Make megatron-core run on CPU (gloo) for tests and the CPU quickstart.

megatron-core assumes CUDA in a few places. ``enable_cpu_runtime()`` redirects exactly those,
and only when this torch has no usable CUDA device: with CUDA present it does nothing and returns
False. Every patch names the upstream code it works around (megatron-core 0.16).

1. ``torch.cuda.current_device()`` is used as a device argument (GlobalMemoryBuffer, rotary
   embeddings, tensor-parallel layers, pipeline p2p buffers): it returns ``"cpu"`` instead.
2. ``Tensor.cuda()`` (schedules, data broadcast): returns the tensor unchanged on CPU;
   ``torch.cuda.synchronize()`` (dist_checkpointing's ``filesystem_async.preload_tensors``) does
   nothing, as there is no device queue to wait for.
3. The CUDA RNG tracker (``tensor_parallel.random``): ``CudaRNGStatesTracker``, ``_get_cuda_rng_state``
   and ``_set_cuda_rng_state`` act on the CPU generator, so ``model_parallel_cuda_manual_seed``
   and the tracker's ``fork`` give per-TP-rank streams as on GPU.
4. ``device="cuda"`` literals in tensor factories (the modules in ``_MODULES_WITH_CUDA_LITERALS``:
   causal masks, schedule token counters, optimizer and grad-norm buffers, ...): those modules
   see a ``torch`` whose factories map the device "cuda" to "cpu".
5. ``Tensor.type()`` with no argument: the optimizers assert CUDA type names
   (``'torch.cuda.FloatTensor'`` in ``optimizer.distrib_optimizer`` and ``optimizer.clip_grads``);
   on CPU the no-argument form answers with the CUDA name of the same dtype.
6. gloo has no reduce-scatter: ``dist_reduce_scatter_func`` in ``tensor_parallel.mappings`` and
   ``tensor_parallel.layers`` (sequence parallelism) becomes all-reduce + own chunk.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

__all__ = ["enable_cpu_runtime", "cpu_runtime_enabled"]

_ENABLED = False


def cpu_runtime_enabled() -> bool:
    return _ENABLED


def _cpu_current_device() -> str:
    return "cpu"


def _tensor_cuda_on_cpu(self: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    return self


_original_tensor_type = torch.Tensor.type


def _tensor_type_as_cuda(self: torch.Tensor, *args, **kwargs):
    result = _original_tensor_type(self, *args, **kwargs)
    if not args and not kwargs and isinstance(result, str) and result.startswith("torch.") and ".cuda." not in result:
        return result.replace("torch.", "torch.cuda.", 1)
    return result


def _reduce_scatter_via_all_reduce(output, input, op=dist.ReduceOp.SUM, group=None, async_op=False):
    """reduce_scatter_tensor for gloo: all-reduce a copy, keep this rank's chunk of dim 0."""
    reduced = input.clone()
    dist.all_reduce(reduced, op=op, group=group)
    rank = dist.get_rank(group)
    output.copy_(reduced.chunk(dist.get_world_size(group), dim=0)[rank])
    return _CompletedWork() if async_op else None


class _CompletedWork:
    """What an async collective returns once it has already run synchronously."""

    def wait(self) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


class _CudaLiteralsOnCPU:
    """Stands in for the ``torch`` module inside a megatron module: factories get "cpu" for "cuda"."""

    _FACTORIES = ("zeros", "ones", "empty", "full", "tensor", "arange", "rand", "randn", "randint")

    def __getattr__(self, name):
        attribute = getattr(torch, name)
        if name not in self._FACTORIES:
            return attribute

        def factory(*args, **kwargs):
            if str(kwargs.get("device", "")).startswith("cuda"):
                kwargs["device"] = "cpu"
            return attribute(*args, **kwargs)

        return factory


_MODULES_WITH_CUDA_LITERALS = (
    "megatron.core.transformer.utils",  # get_default_causal_mask
    "megatron.core.pipeline_parallel.schedules",  # token counters
    "megatron.core.optimizer.optimizer",  # overflow buffers
    "megatron.core.optimizer.clip_grads",  # grad-norm accumulators
    "megatron.core.optimizer.grad_scaler",
    "megatron.core.distributed.param_and_grad_buffer",
    "megatron.core.tensor_parallel.data",  # broadcast_data
    "megatron.core.dist_checkpointing.strategies.state_dict_saver",
    "megatron.core.dist_checkpointing.exchange_utils",
    "megatron.core.rerun_state_machine",
    "megatron.core.utils",
)


def _make_cpu_rng_tracker(base):
    class CPURNGStatesTracker(base):
        """The Megatron RNG tracker over the CPU generator (named states, fork to use one)."""

        def add(self, name, seed):
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            self._is_initialized = True
            self.seeds_.add(seed)
            original = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(original)

        @contextlib.contextmanager
        def fork(self, name="model-parallel-rng"):
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            original = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(original)

    return CPURNGStatesTracker


def enable_cpu_runtime() -> bool:
    """Apply the CPU redirections once; a no-op returning False when CUDA is available."""
    global _ENABLED
    if torch.cuda.is_available():
        return False
    if _ENABLED:
        return True
    import importlib

    from megatron.core.tensor_parallel import layers, mappings, random

    torch.cuda.current_device = _cpu_current_device
    torch.Tensor.cuda = _tensor_cuda_on_cpu
    torch.cuda.synchronize = lambda device=None: None
    torch.Tensor.type = _tensor_type_as_cuda
    random.CudaRNGStatesTracker = _make_cpu_rng_tracker(random.CudaRNGStatesTracker)
    random._get_cuda_rng_state = lambda device=-1, clone=False, graph_safe=False: torch.get_rng_state()
    random._set_cuda_rng_state = lambda new_state, device=-1, graph_safe=False: torch.set_rng_state(new_state)
    random.initialize_rng_tracker(force_reset=True)
    for name in _MODULES_WITH_CUDA_LITERALS:
        importlib.import_module(name).torch = _CudaLiteralsOnCPU()
    mappings.dist_reduce_scatter_func = _reduce_scatter_via_all_reduce
    layers.dist_reduce_scatter_func = _reduce_scatter_via_all_reduce
    _ENABLED = True
    return True
