"""The training loop, on megatron-core's own machinery.

initialize -> model (FP4 spec) in megatron DDP -> megatron optimizer + OptimizerParamScheduler
-> for each iteration: megatron's forward/backward schedule over the micro-batches,
optimizer step, scheduler step -> log, evaluate, checkpoint. Nothing here re-implements what
megatron-core provides; it wires it together and logs like Megatron-LM.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

from .. import dge_probe, health, weight_cache
from ..backward import delayed_fallback_rate
from . import cuda_graphs
from ..gemm import BACKEND_ENV, get_backend
from ..megatron import build_fp4_gpt_model, enable_cpu_runtime
from .arguments import transformer_config_from_args
from .checkpointing import load_checkpoint, load_model_weights, recipe_record, run_record, save_checkpoint
from .child_processes import kill_forked_children_with_parent
from .data import build_datasets, check_data, micro_batches
from .resume import embedding_rows, plan_resume
from .tokenizer import build_tokenizer

__all__ = ["pretrain", "initialize_distributed", "build_model", "build_training", "train_step", "TrainingDiverged"]


class TrainingDiverged(RuntimeError):
    """The loss or gradient norm became NaN/Inf (--check-for-nan-in-loss-and-grad)."""


def initialize_distributed(args) -> torch.device:
    """torch.distributed from torchrun's environment (or one local process), then model parallel."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        if cuda_graphs.enabled(args):  # everything, warm-up included, off the legacy default stream
            cuda_graphs.use_side_stream()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    enable_cpu_runtime()
    model_parallel = args.tensor_model_parallel_size * args.pipeline_model_parallel_size
    if world % model_parallel:
        raise SystemExit(
            f"error: {world} processes cannot hold --tensor-model-parallel-size {args.tensor_model_parallel_size} x "
            f"--pipeline-model-parallel-size {args.pipeline_model_parallel_size}"
        )
    parallel_state.initialize_model_parallel(args.tensor_model_parallel_size, args.pipeline_model_parallel_size)
    dp = parallel_state.get_data_parallel_world_size()
    if args.global_batch_size % (args.micro_batch_size * dp):
        raise SystemExit(f"error: --global-batch-size {args.global_batch_size} is not a multiple of --micro-batch-size x data-parallel size ({args.micro_batch_size} x {dp})")
    torch.manual_seed(args.seed)
    # graph-safe generators under a CUDA graph (each replay then draws fresh dropout masks and SR seeds);
    # a new tracker every time, so a second run in the same process gets the kind it asked for
    model_parallel_cuda_manual_seed(args.seed, use_cudagraphable_rng=cuda_graphs.enabled(args), force_reset_rng=True)
    return torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")


def build_model(args, config, tokenizer):
    """This rank's GPTModel as the flags describe it (also used by tools and evaluation scripts)."""
    return build_fp4_gpt_model(
        config,
        vocab_size=embedding_rows(args, tokenizer.vocab_size, args.tensor_model_parallel_size),
        max_sequence_length=args.max_position_embeddings or args.seq_length,
        position_embedding_type=args.position_embedding_type,
        rotary_base=args.rotary_base,
        share_embeddings_and_output_weights=not args.untie_embeddings_and_output_weights,
    )


def _is_logging_rank() -> bool:
    return (
        parallel_state.is_pipeline_last_stage()
        and parallel_state.get_tensor_model_parallel_rank() == 0
        and parallel_state.get_data_parallel_rank() == 0
    )


def _log(text: str) -> None:
    if _is_logging_rank():
        print(text, flush=True)


def _forward_step(batch_iterator, model):
    batch = next(batch_iterator)
    output = model(batch["tokens"], batch["position_ids"], None, labels=batch["labels"])

    def loss_func(per_token_loss):
        mask = batch["loss_mask"].float()
        loss = (per_token_loss.float() * mask).sum() / mask.sum().clamp_min(1)
        # clone: megatron-core divides the returned loss in place by the number of micro-batches
        return loss, {"lm loss": loss.detach().clone()}

    return output, loss_func


def _forward_backward_func(model, args):
    """megatron-core's schedule, inside a full-iteration CUDA graph with --cuda-graph-impl local
    --cuda-graph-scope full_iteration (megatron_fp4.training.cuda_graphs); one per model."""
    if not cuda_graphs.enabled(args):
        return get_forward_backward_func()
    schedule = getattr(model, "_megatron_fp4_graphed_schedule", None)
    if schedule is None:
        schedule = cuda_graphs.wrap_forward_backward(get_forward_backward_func(), args.cuda_graph_warmup_steps)
        model._megatron_fp4_graphed_schedule = schedule
    return schedule


def _run_schedule(model, batches, args, forward_only: bool) -> float | None:
    losses = _forward_backward_func(model, args)(
        forward_step_func=_forward_step,
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=args.seq_length,
        micro_batch_size=args.micro_batch_size,
        forward_only=forward_only,
    )
    if not parallel_state.is_pipeline_last_stage():
        return None
    loss = torch.stack([entry["lm loss"] for entry in losses]).mean()
    dist.all_reduce(loss, group=parallel_state.get_data_parallel_group())
    return loss.item() / parallel_state.get_data_parallel_world_size()


def delayed_scaling_states(model) -> list[torch.Tensor]:
    """The FP4 layers' delayed output-gradient scaling states (``--fp4-grad-amax delayed``)."""
    chunks = model if isinstance(model, (list, tuple)) else [model]
    return [module.fp4_grad_amax for chunk in chunks for module in chunk.modules()
            if getattr(getattr(module, "fp4_recipe", None), "grad_amax", None) == "delayed" and hasattr(module, "fp4_grad_amax")]


def _log_health(stats: dict[str, dict[str, float]], iteration: int) -> None:
    if stats:
        _log(health.format_summary(stats, iteration))


def _format_seconds(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _check_finite(loss: float | None, grad_norm: float, iteration: int, device: torch.device, last_saved: str) -> None:
    """Stop every rank together when the loss (last pipeline stage) or the gradient norm is not finite."""
    local = (loss is not None and not math.isfinite(loss)) or not math.isfinite(grad_norm)
    flag = torch.tensor([float(local)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item():
        raise TrainingDiverged(
            f"iteration {iteration}: lm loss {loss}, grad norm {grad_norm}: not finite; stopped without saving "
            f"(latest checkpoint: {last_saved}). MEGATRON_FP4_CHECK_FINITE=1 names the first FP4 layer whose input, "
            "weight or output gradient is not finite; --no-check-for-nan-in-loss-and-grad trains on (a model with "
            "NaN/Inf parameters is still never saved)"
        )


def _out_of_time(run_start: float, minutes: float, device: torch.device) -> bool:
    """Whether any rank has trained past the wall-clock limit (all ranks then stop together)."""
    late = torch.tensor([float(time.time() - run_start >= minutes * 60)], device=device)
    dist.all_reduce(late, op=dist.ReduceOp.MAX)
    return bool(late.item())


def build_training(args, tokenizer, device: torch.device):
    """(model in megatron DDP, megatron optimizer, OptimizerParamScheduler, config) as the flags
    say, freshly initialised (also used by benchmarks/bench_e2e.py)."""
    config = transformer_config_from_args(args)
    config.finalize_model_grads_func = finalize_model_grads
    model = build_model(args, config, tokenizer).to(device)
    model = DistributedDataParallel(
        config=config,
        ddp_config=DistributedDataParallelConfig(grad_reduce_in_fp32=True, use_distributed_optimizer=args.use_distributed_optimizer),
        module=model,
    )
    optimizer = get_megatron_optimizer(
        OptimizerConfig(
            optimizer="adam", lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
            adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
            clip_grad=args.clip_grad, bf16=args.bf16, params_dtype=config.params_dtype,
            use_distributed_optimizer=args.use_distributed_optimizer,
        ),
        [model],
    )
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0, max_lr=args.lr, min_lr=args.min_lr, lr_warmup_steps=args.lr_warmup_iters,
        lr_decay_steps=args.lr_decay_iters or args.train_iters, lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay, end_wd=args.weight_decay, wd_incr_steps=args.train_iters, wd_incr_style="constant",
        # plan_resume has refused differing schedules unless one of these flags was given
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
        override_opt_param_scheduler=not args.use_checkpoint_opt_param_scheduler,
    )
    return model, optimizer, scheduler, config


def train_step(model, optimizer, batches: list[dict], args) -> tuple[float | None, float]:
    """One optimizer step over the micro-batches of a global batch: (loss on the last pipeline
    stage else None, gradient norm)."""
    model.train()
    model.zero_grad_buffer()
    optimizer.zero_grad()
    with weight_cache.step_scope():  # with MEGATRON_FP4_WEIGHT_CACHE=1: each weight quantized once per step
        loss = _run_schedule(model, batches, args, forward_only=False)
    probes = dge_probe.probes_for_model(model) if health.is_collecting() else []  # health intervals only
    for probe in probes:
        probe.before()
    _, grad_norm, _ = optimizer.step()
    for probe in probes:
        probe.record()
    return loss, grad_norm


def pretrain(args) -> list[dict]:
    """Train as the arguments say; returns the logged records (iteration, loss, lr, ...)."""
    if args.fp4_gemm_backend:  # the layers ask get_backend(), which reads this
        os.environ[BACKEND_ENV] = args.fp4_gemm_backend
    kill_forked_children_with_parent()  # megatron-core's checkpoint writers are forked
    device = initialize_distributed(args)
    tokenizer = build_tokenizer(args)
    plan = plan_resume(args, tokenizer)
    _log(plan.found)
    has_validation = check_data(args, tokenizer, _log)
    model, optimizer, scheduler, config = build_training(args, tokenizer, device)
    iteration, consumed = 0, 0
    if plan.weights_only:
        load_model_weights(plan.root, model, plan.iteration)
    elif plan.root is not None:
        iteration, consumed = load_checkpoint(plan.root, model, optimizer, scheduler, plan.iteration)
        _log(f"resumed from {plan.root} at iteration {iteration} ({consumed} samples consumed)")
    if iteration >= args.train_iters:
        _log(f"iteration {iteration} is already --train-iters {args.train_iters}: nothing to train")
        return []
    train_data, valid_data = build_datasets(args, tokenizer)
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    # `bf16_dge` quantizes nothing but changes the weight gradient: named as what it runs, not as BF16
    recipe = config.fp4_quant_recipe.describe() if config.fp4_quant_recipe.changes_linear else "bf16 (no FP4)"
    backend = get_backend().name if config.fp4_quant_recipe.quantizes else "- (BF16 GEMMs)"
    _log(f"model: {sum(p.numel() for p in model.parameters())} parameters on this rank; recipe {recipe}; GEMM backend {backend}")
    record_for_checkpoints = run_record(args.argv, args.tokenizer_model, recipe_record(args.fp4_quant_recipe, config.fp4_bf16_layers))
    last_saved = f"{plan.root} iteration {plan.iteration}" if plan.root else "none"

    def save(at_iteration: int) -> None:
        nonlocal last_saved
        last_saved = save_checkpoint(args.save, at_iteration, model, optimizer, scheduler, consumed, record_for_checkpoints)

    writer = None
    if args.tensorboard_dir and _is_logging_rank():
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=args.tensorboard_dir)
    records, tokens_per_iteration = [], args.global_batch_size * args.seq_length
    window_start, window_iterations, run_start = time.time(), 0, time.time()
    start_iteration = iteration
    health_interval = args.log_interval if args.fp4_health_interval is None else args.fp4_health_interval
    if cuda_graphs.enabled(args):
        health_interval = 0  # measured on the host: not inside a graph (an explicit interval was refused)
        _log(f"CUDA graph: the forward and backward of each step as one graph after {args.cuda_graph_warmup_steps} eager "
             "steps; FP4 health telemetry off")
    delayed_scaling = getattr(config.fp4_quant_recipe, "grad_amax", None) == "delayed"
    while iteration < args.train_iters:
        batches = micro_batches(train_data, consumed, args.global_batch_size, args.micro_batch_size, dp_rank, dp_size, device)
        collect = bool(config.fp4_quant_recipe.changes_linear and health_interval and (iteration + 1) % health_interval == 0)
        with health.collecting() if collect else contextlib.nullcontext() as health_records:
            loss, grad_norm = train_step(model, optimizer, batches, args)
        if args.check_for_nan_in_loss_and_grad:
            _check_finite(loss, grad_norm, iteration + 1, device, last_saved)
        scheduler.step(increment=1)
        iteration, consumed = iteration + 1, consumed + args.global_batch_size
        window_iterations += 1
        record = {"iteration": iteration, "lm loss": loss, "lr": scheduler.get_lr(optimizer.param_groups[0]), "grad norm": grad_norm}
        if iteration % args.log_interval == 0 or iteration == args.train_iters:
            elapsed = time.time() - window_start
            tokens_per_second = window_iterations * tokens_per_iteration / max(elapsed, 1e-9)
            done = (time.time() - run_start) / max(iteration - start_iteration, 1)
            record["tokens/s"] = tokens_per_second
            fell_back = ""
            delayed_states = delayed_scaling_states(model) if delayed_scaling else []  # (a layer may re-place its state at its first forward)
            if delayed_states:  # how often the previous backward's scale did not serve (dY written twice), since the last log line
                fallbacks, calls = delayed_fallback_rate(delayed_states, reset=True)
                record["delayed grad scale fallbacks"] = fallbacks / max(calls, 1)
                fell_back = f" | delayed grad scales fell back {fallbacks}/{calls}"
            _log(
                f" iteration {iteration:>7}/{args.train_iters} | consumed tokens {consumed * args.seq_length:>11} | "
                f"lm loss {loss if loss is not None else float('nan'):.4f} | lr {record['lr']:.3e} | "
                f"grad norm {grad_norm:.3f} | tokens/s {tokens_per_second:,.0f} | "
                f"ETA {_format_seconds(done * (args.train_iters - iteration))}"
                + (f" | max memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device.type == "cuda" else "") + fell_back
            )
            window_start, window_iterations = time.time(), 0
        if has_validation and (iteration % args.eval_interval == 0 or iteration == args.train_iters):
            model.eval()
            eval_start = (iteration // args.eval_interval) * args.eval_iters * args.global_batch_size
            with torch.no_grad():
                values = [
                    _run_schedule(model, micro_batches(valid_data, eval_start + i * args.global_batch_size, args.global_batch_size, args.micro_batch_size, dp_rank, dp_size, device), args, forward_only=True)
                    for i in range(args.eval_iters)
                ]
            if values[0] is not None:
                record["validation loss"] = sum(values) / len(values)
                _log(f" validation loss at iteration {iteration}: {record['validation loss']:.4f}")
        if collect:
            record["fp4 health"] = health.gather(health_records)
            _log_health(record["fp4 health"], iteration)
        records.append(record)
        if writer is not None:
            for key, value in record.items():
                if key == "fp4 health":
                    for layer, stats in value.items():
                        for stat, number in stats.items():
                            writer.add_scalar(f"fp4/{stat}/{layer}", number, iteration)
                elif key != "iteration" and value is not None:
                    writer.add_scalar(key, value, iteration)
        if args.save and args.save_interval and iteration % args.save_interval == 0:
            save(iteration)
        if args.exit_interval and iteration % args.exit_interval == 0:
            break
        if args.exit_duration_in_mins and _out_of_time(run_start, args.exit_duration_in_mins, device):
            _log(f"exiting at iteration {iteration}: --exit-duration-in-mins {args.exit_duration_in_mins:g} reached")
            break
    if args.save and (not args.save_interval or iteration % args.save_interval):
        save(iteration)
    if writer is not None:
        writer.close()
    if cuda_graphs.enabled(args):
        cuda_graphs.reset()  # the graphs' memory pools go with them
    return records
