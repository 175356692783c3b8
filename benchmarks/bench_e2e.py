"""The trainer's step end to end, BF16 and each FP4 recipe, in one process: tokens/s and where the time goes.

    python benchmarks/bench_e2e.py [--shapes 1.3B 7B 13B] [--seq-lengths 2048 4096] [--layers 2 [4 ...]]
        [--recipes bf16 paper paper-no-occ direct] [--attention flash unfused] [--tokens-per-step 8192]

With several ``--layers`` it also prints the marginal cost of one transformer layer and the ratio
projected to LLaMA-2's depth (``marginal_layer_rows``): at 2 layers the BF16 LM head and the loss
over the vocabulary are a large share of the step, in a 32-layer model they are not.

For each layer shape (LLaMA-2 full width, ``--layers`` transformer layers, vocabulary 32000) and
sequence length, every (attention backend, recipe) pair builds the model the trainer builds
(``megatron_fp4.training.trainer.build_training``: megatron DDP, megatron Adam, bf16), on the same
``--mock-data`` micro-batches with the same seed, and times ``train_step`` (forward and backward of
``--micro-batches`` micro-batches, then the optimizer; the optimizer alone is timed too: it is the
same for every recipe and shrinks per token as the global batch grows). Printed per run: tokens/s, the ratio to BF16 with the same attention backend in the
same run (and to BF16 with flash attention, the baseline the targets use), wall vs GPU-busy time
per step (the gap is host time the GPU waits for), and a breakdown of the GPU time by kernel
family from one profiled step: GEMM, FP4 quantizers (our Triton kernels), sort/select (OCC's
quantile and residual extraction), attention, other elementwise/copies.

Single process (torchrun not needed); one GPU.
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import torch

SHAPES = {  # hidden, heads, FFN (SwiGLU) of LLaMA-2
    "1.3B": (2048, 16, 5504),
    "7B": (4096, 32, 11008),
    "13B": (5120, 40, 13824),
}
RECIPE_FLAGS = {
    "bf16": "",
    "paper": "--fp4 --fp4-recipe paper",
    "paper-hot": "--fp4 --fp4-recipe paper --fp4-occ-compensation hot_channels",
    "paper-fp8": "--fp4 --fp4-recipe paper --fp4-occ-compensation fp8",
    "paper-exact": "--fp4 --fp4-recipe paper --fp4-occ-compensation exact",
    "paper-fwd-occ": "--fp4 --fp4-recipe paper --fp4-occ-compensation fp8 --no-fp4-occ-wgrad-compensation",
    "paper-inline": "--fp4 --fp4-recipe paper --fp4-occ-compensation inline",
    "paper-no-occ": "--fp4 --fp4-recipe paper --no-fp4-occ",
    "direct": "--fp4 --fp4-recipe direct",
    "nvfp4": "--fp4 --fp4-recipe nvfp4",
    "mxfp4": "--fp4 --fp4-recipe mxfp4",
    "direct-weight-cache": "--fp4 --fp4-recipe direct",
    "paper-no-occ-weight-cache": "--fp4 --fp4-recipe paper --no-fp4-occ",
}
# every recipe once more with its step's forward and backward as one CUDA graph (megatron_fp4.training.cuda_graphs)
GRAPH_FLAGS = "--cuda-graph-impl local --cuda-graph-scope full_iteration --cuda-graph-warmup-steps 1"
# (not exact OCC: it sizes its residual on the host, which a graph refuses)
RECIPE_FLAGS.update({f"{name}-graph": f"{flags} {GRAPH_FLAGS}" for name, flags in list(RECIPE_FLAGS.items()) if name != "paper-exact"})
# Kernel fusions (megatron_fp4.training.fusions): every row runs the trainer's defaults (fused SwiGLU
# and RoPE) plus upstream's opt-in fused cross-entropy; "-unfused" rows run megatron-core's unfused
# code for all three (sessions 1-7's configuration), the before/after of the fusions in one run.
FUSED_LOSS_FLAGS = "--cross-entropy-loss-fusion"
UNFUSED_FLAGS = "--no-bias-swiglu-fusion --no-rope-fusion"
RECIPE_FLAGS.update({f"{name}-unfused": f"{RECIPE_FLAGS[name]} {UNFUSED_FLAGS}" for name in ("bf16", "paper", "direct", "bf16-graph", "paper-graph", "direct-graph")})
# "-nofq" rows: the SwiGLU and the RMSNorms written out and read again by the FP4 quantizers
# (--no-fp4-quantize-fusion), the before/after of issue 14 item 6's fused inputs in one run
RECIPE_FLAGS.update({f"{name}-nofq": f"{RECIPE_FLAGS[name]} --no-fp4-quantize-fusion" for name in ("paper", "direct", "paper-graph", "direct-graph")})
# "-delayed" rows: the output gradient's FP8 scales from the layer's previous backward (--fp4-grad-amax delayed: dY read once)
RECIPE_FLAGS.update({f"{name}-delayed": f"{RECIPE_FLAGS[name]} --fp4-grad-amax delayed" for name in ("paper", "direct", "paper-graph", "direct-graph")})
# ... with the previous maximum exactly (no headroom: falls back whenever the gradient grew)
RECIPE_FLAGS.update({f"{name}-delayed-m0": f"{RECIPE_FLAGS[name]} --fp4-grad-amax delayed --fp4-grad-amax-margin 0" for name in ("paper", "direct", "paper-graph", "direct-graph")})
# environment per recipe row: the opt-in weight cache on (megatron_fp4.weight_cache) to measure what it saves
RECIPE_ENV = {f"{name}{graph}": {"MEGATRON_FP4_WEIGHT_CACHE": "1"} for name in ("direct-weight-cache", "paper-no-occ-weight-cache") for graph in ("", "-graph")}
# kernel-name fragments (lower case) per family, checked in this order
FAMILIES = (
    ("attention", ("flash", "fmha", "attention", "softmax")),
    ("quantize", ("_quantize", "_dge_", "_codes_to_fp8", "_folded_", "_finalize_scales", "_partial_absmax", "_decode_kernel")),
    ("sort/select", ("sort", "radix", "nonzero", "select", "topk", "cub::")),
    ("GEMM", ("gemm", "xmma", "cutlass", "nvjet", "sm90_", "matmul", "splitk")),
)


def family(kernel: str) -> str:
    name = kernel.lower()
    for label, fragments in FAMILIES:
        if any(fragment in name for fragment in fragments):
            return label
    return "other"


def trainer_flags(shape: str, seq: int, layers: int, micro_batch: int, micro_batches: int, recipe: str, attention: str, vocab: int) -> list[str]:
    hidden, heads, ffn = SHAPES[shape]
    return (
        f"--num-layers {layers} --hidden-size {hidden} --num-attention-heads {heads} --ffn-hidden-size {ffn} "
        f"--seq-length {seq} --max-position-embeddings {seq} --swiglu --normalization RMSNorm --position-embedding-type rope "
        f"--untie-embeddings-and-output-weights --disable-bias-linear --hidden-dropout 0 --attention-dropout 0 "
        f"--micro-batch-size {micro_batch} --global-batch-size {micro_batch * micro_batches} --train-iters 1000 --lr 1e-4 --bf16 "
        f"--mock-data --tokenizer-type NullTokenizer --vocab-size {vocab} --eval-iters 0 --attention-backend {attention} "
        f"{RECIPE_FLAGS[recipe]} {'' if recipe.endswith('-unfused') else FUSED_LOSS_FLAGS}"
    ).split()


def profile_step(step) -> tuple[float, dict[str, float], dict[str, float]]:
    """(GPU-busy ms, ms per kernel family, ms per kernel name of the "other" family) of one step."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        step()
        torch.cuda.synchronize()
    totals: dict[str, float] = {}
    others: dict[str, float] = {}
    for event in profiler.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            label, ms = family(event.name), event.device_time / 1000
            totals[label] = totals.get(label, 0.0) + ms
            if label == "other":
                others[event.name] = others.get(event.name, 0.0) + ms
    return sum(totals.values()), totals, others


def measure(argv: list[str], warmup: int, steps: int) -> dict:
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    from megatron_fp4.backward import delayed_fallback_rate
    from megatron_fp4.training import cuda_graphs
    from megatron_fp4.training.arguments import parse_args
    from megatron_fp4.training.data import build_datasets, micro_batches
    from megatron_fp4.training.tokenizer import build_tokenizer
    from megatron_fp4.training.trainer import build_training, delayed_scaling_states, train_step

    args = parse_args(argv)
    device = torch.device("cuda", torch.cuda.current_device())
    for variable in ("NVTE_FLASH_ATTN", "NVTE_FUSED_ATTN", "NVTE_UNFUSED_ATTN"):
        os.environ.pop(variable, None)  # megatron's GPTModel sets these per attention backend and asserts they agree
    previous_stream = cuda_graphs.use_side_stream() if cuda_graphs.enabled(args) else None  # as the trainer does
    torch.manual_seed(1234)
    # the trainer's seeding: megatron's RNG tracker graph-safe under a CUDA graph
    model_parallel_cuda_manual_seed(1234, use_cudagraphable_rng=cuda_graphs.enabled(args), force_reset_rng=True)
    tokenizer = build_tokenizer(args)
    model, optimizer, _scheduler, _config = build_training(args, tokenizer, device)
    train_data, _ = build_datasets(args, tokenizer)
    batches = micro_batches(train_data, 0, args.global_batch_size, args.micro_batch_size, 0, 1, device)
    step = lambda: train_step(model, optimizer, batches, args)  # noqa: E731
    for _ in range(warmup):
        loss, _ = step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1000 / steps
    start = time.perf_counter()
    for _ in range(steps):  # the optimizer alone: the same in every recipe, amortised over the global batch
        optimizer.step()
    torch.cuda.synchronize()
    optimizer_ms = (time.perf_counter() - start) * 1000 / steps
    busy_ms, families, others = profile_step(step)
    states = delayed_scaling_states(model)
    fallbacks = delayed_fallback_rate(states) if states else None  # delayed scaling: (fallbacks, calls) over every step run here
    result = {"wall_ms": wall_ms, "busy_ms": busy_ms, "families": families, "others": others, "loss": loss, "optimizer_ms": optimizer_ms, "fallbacks": fallbacks,
              "tokens_per_s": args.global_batch_size * args.seq_length / wall_ms * 1000,
              "memory_gib": torch.cuda.max_memory_allocated() / 2**30}
    del model, optimizer, batches, train_data, step
    cuda_graphs.reset()  # the captured graph and its memory pool
    if previous_stream is not None:
        torch.cuda.synchronize()
        torch.cuda.set_stream(previous_stream)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return result


PROJECT_LAYERS = {"1.3B": 24, "7B": 32, "13B": 40}  # LLaMA-2's depths


def measure_with_env(flags: list[str], recipe: str, warmup: int, steps: int) -> dict:
    """``measure`` with the recipe row's environment (RECIPE_ENV) set for its duration only."""
    saved = {name: os.environ.get(name) for name in RECIPE_ENV.get(recipe, {})}
    os.environ.update(RECIPE_ENV.get(recipe, {}))
    try:
        return measure(flags, warmup, steps)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def marginal_layer_rows(results: list[dict], project_layers: int | None = None) -> list[dict]:
    """Per (shape, seq, attention, recipe) measured at two or more depths: the wall time one more
    transformer layer adds (least-squares slope of step time over layers: embedding, LM head, loss
    and the optimizer's fixed part drop out), its ratio to BF16's, and the tokens/s ratio projected
    to ``project_layers`` (LLaMA-2's depth by default) as intercept + depth x slope. A 2-layer step
    is dominated by the BF16 LM head and the loss over a 32k vocabulary; a 32-layer model is not."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["shape"], r["seq"], r["attention"], r["recipe"]), []).append(r)
    fits = {}
    for key, rows in groups.items():
        xs = [float(r["layers"]) for r in rows]
        if len(set(xs)) < 2:
            continue
        ys = [r["wall_ms"] for r in rows]
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sum((x - mean_x) ** 2 for x in xs)
        fits[key] = (slope, mean_y - slope * mean_x)
    rows_out = []
    for (shape, seq, attention, recipe), (slope, intercept) in fits.items():
        depth = project_layers or PROJECT_LAYERS[shape]
        base = fits.get((shape, seq, attention, "bf16"))
        base_graph = fits.get((shape, seq, attention, "bf16-graph"))
        projected = intercept + depth * slope
        rows_out.append({
            "shape": shape, "seq": seq, "attention": attention, "recipe": recipe, "layer_ms": slope, "fixed_ms": intercept,
            "layer_ratio": base[0] / slope if base else float("nan"), "depth": depth,
            "projected_ratio": (base[1] + depth * base[0]) / projected if base else float("nan"),
            "projected_ratio_graph": (base_graph[1] + depth * base_graph[0]) / projected if base_graph else float("nan"),
        })
    return rows_out


def print_marginal_layer_table(results: list[dict], project_layers: int | None) -> None:
    print("\nMarginal cost of one transformer layer (slope of step time over the measured depths) and the "
          "projected full-depth ratio:")
    print("| shape | seq | attention | recipe | ms per layer | fixed ms | per-layer speed vs BF16 | projected depth | projected vs BF16 | projected vs BF16 graph |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in marginal_layer_rows(results, project_layers):
        print(f"| {r['shape']} | {r['seq']} | {r['attention']} | {r['recipe']} | {r['layer_ms']:.1f} | {r['fixed_ms']:.1f} | "
              f"{r['layer_ratio']:.2f}x | {r['depth']} | {r['projected_ratio']:.2f}x | {r['projected_ratio_graph']:.2f}x |")


def print_top_other(results: list[dict], count: int) -> None:
    """The kernels behind each run's "other" column (elementwise, copies, norms, loss...), largest first."""
    for r in results:
        print(f"\n'other' kernels, {r['shape']} {r['layers']} layers seq {r['seq']} {r['attention']} {r['recipe']} "
              f"({r['families'].get('other', 0.0):.1f} ms of {r['busy_ms']:.1f} GPU-busy):")
        print("| ms | kernel |")
        print("| --- | --- |")
        for name, ms in sorted(r["others"].items(), key=lambda item: -item[1])[:count]:
            print(f"| {ms:.2f} | {name[:160].replace('|', '/')} |")


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=["1.3B", "7B"])
    parser.add_argument("--seq-lengths", nargs="+", type=int, default=[2048])
    parser.add_argument("--layers", type=int, nargs="+", default=[2],
                        help="layer counts; with two or more, also the marginal cost of one transformer layer "
                             "(step time difference per added layer) and the ratio projected to the full depth")
    parser.add_argument("--project-layers", type=int, default=None,
                        help="depth for the projection (default: LLaMA-2's, 24/32/40 for 1.3B/7B/13B)")
    parser.add_argument("--tokens-per-step", type=int, default=8192, help="tokens per micro-batch")
    parser.add_argument("--micro-batches", type=int, default=4, help="micro-batches per optimizer step (gradient accumulation)")
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPE_FLAGS), default=["bf16", "paper", "paper-no-occ", "direct"])
    parser.add_argument("--attention", nargs="+", choices=["flash", "unfused"], default=["flash"])
    parser.add_argument("--vocab-size", type=int, default=32000)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--top-other", type=int, default=0, metavar="N",
                        help="after the tables, the N kernels with the most GPU time in the 'other' family, per run")
    options = parser.parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit("bench_e2e needs a CUDA GPU")

    import torch.distributed as dist
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    dist.init_process_group("nccl", rank=0, world_size=1)
    parallel_state.initialize_model_parallel(1, 1)
    model_parallel_cuda_manual_seed(1234)

    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}; layers {options.layers}, vocabulary {options.vocab_size}, "
          f"{options.micro_batches} micro-batches of {options.tokens_per_step} tokens per step; mean of {options.steps} timed steps "
          f"after {options.warmup}; GPU ms by kernel family from one profiled step")
    header = ("| shape | layers | seq | attention | recipe | tokens/s | vs BF16 (same attention) | vs BF16 flash | vs BF16 graph | step ms | GPU-busy ms | "
              "GEMM | quantize | sort/select | attention | other | optimizer ms | peak GiB |")
    print(header)
    print("| " + " | ".join("---" for _ in range(header.count("|") - 1)) + " |")
    results = []
    for shape in options.shapes:
        for layers in options.layers:
            for seq in options.seq_lengths:
                micro_batch = max(1, options.tokens_per_step // seq)
                baseline: dict[str, float] = {}
                for attention in options.attention:
                    for recipe in options.recipes:
                        flags = trainer_flags(shape, seq, layers, micro_batch, options.micro_batches, recipe, attention, options.vocab_size)
                        try:
                            r = measure_with_env(flags, recipe, options.warmup, options.steps)
                        except Exception as error:  # one failing row (e.g. a capture error) does not lose the table
                            print(f"| {shape} | {layers} | {seq} | {attention} | {recipe} | error: {type(error).__name__}: {str(error)[:300]} |", flush=True)
                            continue
                        if recipe in ("bf16", "bf16-graph"):
                            baseline[attention if recipe == "bf16" else f"{attention}-graph"] = r["tokens_per_s"]
                        same = r["tokens_per_s"] / baseline[attention] if attention in baseline else float("nan")
                        flash = r["tokens_per_s"] / baseline["flash"] if "flash" in baseline else float("nan")
                        graphed = r["tokens_per_s"] / baseline[f"{attention}-graph"] if f"{attention}-graph" in baseline else float("nan")
                        f = r["families"]
                        print(f"| {shape} | {layers} | {seq} | {attention} | {recipe} | {r['tokens_per_s']:,.0f} | {same:.2f}x | {flash:.2f}x | {graphed:.2f}x | "
                              f"{r['wall_ms']:.1f} | {r['busy_ms']:.1f} | " + " | ".join(f"{f.get(k, 0.0):.1f}" for k in ("GEMM", "quantize", "sort/select", "attention", "other"))
                              + f" | {r['optimizer_ms']:.1f} | {r['memory_gib']:.1f} |", flush=True)
                        if r["fallbacks"] is not None:  # outside the table: a line of its own
                            fell, calls = r["fallbacks"]
                            print(f"  {shape} {layers} {recipe}: delayed scaling fell back in {fell} of {calls} layer backward calls ({fell / max(calls, 1):.1%})", flush=True)
                        results.append({"shape": shape, "layers": layers, "seq": seq, "attention": attention, "recipe": recipe, **r})
    if len(set(options.layers)) > 1:
        print_marginal_layer_table(results, options.project_layers)
    if options.top_other:
        print_top_other(results, options.top_other)
    parallel_state.destroy_model_parallel()
    dist.destroy_process_group()
    return results


if __name__ == "__main__":
    main()
