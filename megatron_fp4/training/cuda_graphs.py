"""Full-iteration CUDA graphs for the trainer: ``--cuda-graph-impl local --cuda-graph-scope full_iteration``.

Why: a small or narrow model is host-bound. At the 1.3B layer shape an FP4 linear's forward and
backward cost ~2 ms of Python and launches against ~0.3-0.6 ms of GPU work (benchmarks/NOTES.md),
so the GPU idles a third of the step. Recorded once into one CUDA graph, the forward and
backward of every micro-batch of a step replay with no host work at all.

What is captured: megatron-core's forward-backward schedule (all micro-batches, the DDP gradient
accumulation into ``main_grad`` and the gradient reduction at its end), through megatron-core's
own ``FullCudaGraphWrapper`` (upstream's implementation of the same flags). The optimizer step,
the loss/grad-norm checks and logging stay outside, eager. The first ``--cuda-graph-warmup-steps``
steps run eagerly (Triton compiles, cuBLAS picks its kernels), the next one is captured, every
later one replays; evaluation gets its own graph the same way.

Why it is correct for FP4: every kernel of the FP4 forward/backward is free of host
synchronisation and keeps its buffers on the device (tested: a linear fwd+bwd replayed in a graph
equals eager, tests/test_cuda_graphs.py; a training run with the graph equals the eager run,
tests/training/test_cuda_graph_training.py). Random numbers come from generators registered with
the graph (the default CUDA generator, and megatron's tracker made graph-safe here), so every
replay draws fresh stochastic-rounding seeds and dropout masks instead of repeating the
captured ones. Weights are read from their parameters' storage, which the optimizer updates in
place.

What cannot run inside a graph, refused by name (``check``): FP4 health telemetry
(``--fp4-health-interval``: it measures on the host), exact OCC compensation (its residual is
sized on the host), ``MEGATRON_FP4_CHECK_FINITE=1`` (a host check per quantizer). Scopes other than ``full_iteration`` (megatron-core's per-layer graphs) and
``--cuda-graph-impl transformer_engine`` are not wired and fail naming the flag.

The trainer runs on a side stream when graphs are on (``use_side_stream``): megatron-core's wrapper
warms up on the current stream, and warm-up on the legacy default stream made the first capture
fail on an H200.

megatron-core keeps the graphs in class attributes; ``reset`` clears them so a second model in
the same process (a benchmark, a test) never replays the first model's graph.
"""

from __future__ import annotations

import argparse

import torch

__all__ = ["add_cuda_graph_arguments", "check", "refusal_inside_graph", "enabled", "use_side_stream", "wrap_forward_backward", "reset", "rng_states_as"]

FULL_ITERATION = "full_iteration"


def add_cuda_graph_arguments(group: argparse._ArgumentGroup) -> None:
    """Upstream's spellings: --cuda-graph-impl, --cuda-graph-scope, --cuda-graph-warmup-steps and
    the deprecated --enable-cuda-graph (= --cuda-graph-impl local)."""
    group.add_argument("--cuda-graph-impl", choices=["none", "local", "transformer_engine"], default="none",
                       help="local with --cuda-graph-scope full_iteration: the forward and backward of a whole step as one CUDA graph")
    group.add_argument("--cuda-graph-scope", nargs="+", default=[], metavar="SCOPE",
                       help="full_iteration (the only scope this trainer supports)")
    group.add_argument("--cuda-graph-warmup-steps", type=int, default=3,
                       help="eager steps before the graph is captured (Triton compilation, cuBLAS heuristics)")
    group.add_argument("--enable-cuda-graph", action="store_true", help="deprecated upstream spelling of --cuda-graph-impl local")


def check(args: argparse.Namespace) -> str | None:
    """The error message for a CUDA-graph flag combination this trainer cannot run, else None.
    Normalises --enable-cuda-graph to --cuda-graph-impl local."""
    if args.enable_cuda_graph:
        if args.cuda_graph_impl != "none":
            return "--enable-cuda-graph is the deprecated spelling of --cuda-graph-impl local: give one of them"
        args.cuda_graph_impl = "local"
    if args.cuda_graph_impl == "transformer_engine":
        return ("--cuda-graph-impl transformer_engine needs Transformer Engine modules; this trainer's FP4 layers are "
                "megatron-core local ones: use --cuda-graph-impl local --cuda-graph-scope full_iteration")
    if args.cuda_graph_warmup_steps < 0:
        return f"--cuda-graph-warmup-steps {args.cuda_graph_warmup_steps} must not be negative"
    if args.cuda_graph_impl == "none":
        if args.cuda_graph_scope:
            return f"--cuda-graph-scope {' '.join(args.cuda_graph_scope)} needs --cuda-graph-impl local"
        return None
    if args.cuda_graph_scope != [FULL_ITERATION]:
        given = " ".join(args.cuda_graph_scope) or "(none: megatron-core's per-layer graphs)"
        return (f"--cuda-graph-scope {given}: this trainer supports --cuda-graph-scope {FULL_ITERATION} only "
                "(one graph for the forward and backward of a whole step)")
    refusal = refusal_inside_graph(getattr(args, "fp4_quant_recipe", None), args.fp4_health_interval, "--cuda-graph-impl local")
    if refusal:
        return refusal
    if not torch.cuda.is_available():
        return "--cuda-graph-impl local needs a CUDA GPU"
    return None


def refusal_inside_graph(recipe, health_interval: int | None, graph_flags: str) -> str | None:
    """Why these FP4 settings cannot run inside a full-iteration CUDA graph (host work inside the
    step), else None; shared with Megatron-LM's patched command line."""
    if health_interval:
        return (f"--fp4-health-interval {health_interval} cannot run inside a CUDA graph (it measures on the host): "
                f"use --fp4-health-interval 0 with {graph_flags}, or train without the graph")
    if recipe is not None and recipe.occ.enabled and recipe.occ.compensation == "exact" and recipe.occ.residual_compensation:
        return ("--fp4-occ-compensation exact sizes its outlier residual on the host (nonzero): it cannot run inside "
                f"{graph_flags}; inline (the default), fp8 and hot_channels can")
    from ..quantize import check_finite_enabled

    if check_finite_enabled():
        return f"MEGATRON_FP4_CHECK_FINITE=1 checks every quantizer's input on the host: it cannot run inside {graph_flags}"
    return None


def enabled(args: argparse.Namespace) -> bool:
    return getattr(args, "cuda_graph_impl", "none") == "local" and FULL_ITERATION in getattr(args, "cuda_graph_scope", [])


def use_side_stream() -> "torch.cuda.Stream":
    """Make a new stream the current one (returns the previous). Capturing the backward needs the
    warm-up steps, and everything before them, off the legacy default stream: on an H200 the first
    capture after eager steps on the default stream failed in autograd's backward with "operation
    would make the legacy stream depend on a capturing blocking stream" (torch's own rule for
    whole-network capture: warm up on a side stream)."""
    previous = torch.cuda.current_stream()
    torch.cuda.set_stream(torch.cuda.Stream())
    return previous


def reset() -> None:
    """Drop megatron-core's captured full-iteration graphs, their static batches and step counts."""
    from megatron.core.full_cuda_graph import FullCudaGraphWrapper, StaticBufferLoader

    FullCudaGraphWrapper.curr_iteration = {"training": 0, "validation": 0}
    FullCudaGraphWrapper.cuda_graph = {"training": None, "validation": None}
    FullCudaGraphWrapper.result = {"training": None, "validation": None}
    StaticBufferLoader.static_buffers = {"training": [], "validation": []}


def wrap_forward_backward(forward_backward_func, warmup_steps: int):
    """megatron-core's full-iteration graph around a fresh state (see ``reset``)."""
    from megatron.core.full_cuda_graph import FullCudaGraphWrapper

    reset()
    return FullCudaGraphWrapper(forward_backward_func, cuda_graph_warmup_steps=warmup_steps)


def rng_states_as(states: dict, graphable: bool) -> dict:
    """Tracker states as plain tensors (``graphable=False``: what checkpoints store, so a run saved
    with or without CUDA graphs resumes either way) or as the torch.Generator objects a graph-safe
    tracker holds (``graphable=True``)."""
    from megatron.core.tensor_parallel.random import convert_cuda_rng_state

    return {name: convert_cuda_rng_state(state, to_graphable=graphable) for name, state in states.items()}
