"""What a run starts from, decided and checked before anything is built or written.

A resume that silently does something else than the user meant costs a training run: a missing
tracker file that restarts at iteration 0 and then overwrites every checkpoint, a new ``--lr``
that the checkpoint's scheduler quietly ignores, an extended ``--train-iters`` that trains at
learning rate 0, a changed ``--num-attention-heads`` whose tensors happen to have the same shapes.
``plan_resume`` reads only small files (the tracker, ``args.json``, the checkpoint's common state)
and refuses such runs with a message naming the flags and both values.
"""

from __future__ import annotations

import dataclasses
import math
import os

from megatron.core import dist_checkpointing

from .checkpointing import CheckpointError, checkpoint_directory, checkpoint_iterations, file_sha256, latest_iteration, read_run_record, verify_checkpoint

__all__ = ["ResumePlan", "plan_resume", "architecture", "padded_vocab_size", "embedding_rows", "scheduler_flag_values"]


@dataclasses.dataclass(frozen=True)
class ResumePlan:
    """Where the run's state comes from: ``root`` at ``iteration`` (None: fresh), all of it or
    (``weights_only``, --finetune) only the model; ``found`` says so for the log."""

    root: str | None
    iteration: int | None
    weights_only: bool
    found: str


def padded_vocab_size(vocab: int, tensor_parallel: int, multiple: int = 128) -> int:
    """The embedding rows megatron pads the vocabulary to: a multiple of 128 x TP."""
    step = multiple * tensor_parallel
    return math.ceil(vocab / step) * step


def embedding_rows(args, tokenizer_vocab: int, tensor_parallel: int) -> int:
    """Rows of the embedding and output layer: the tokenizer's vocabulary padded for TP, or
    --vocab-size where it fixes the padded size (with NullTokenizer it is upstream's tokenizer
    size instead, which the tokenizer already counts)."""
    if args.vocab_size and getattr(args, "tokenizer_type", None) != "NullTokenizer":
        return args.vocab_size
    return padded_vocab_size(tokenizer_vocab, tensor_parallel)


def architecture(args) -> dict[str, object]:
    """The flags that fix the model's tensors and their meaning, with their effective values
    (defaults filled in as the model builder fills them). Layout flags (TP/PP/DP) are not here:
    checkpoints reshard across them."""
    heads = args.num_attention_heads
    values = {
        "--num-layers": args.num_layers,
        "--hidden-size": args.hidden_size,
        "--num-attention-heads": heads,
        "--ffn-hidden-size": args.ffn_hidden_size or 4 * args.hidden_size,
        "--kv-channels": args.kv_channels or args.hidden_size // heads,
        "--num-query-groups": args.num_query_groups or heads,
        "--swiglu": args.swiglu,
        "--normalization": args.normalization,
        "--norm-epsilon": args.norm_epsilon,
        "--position-embedding-type": args.position_embedding_type,
        "--untie-embeddings-and-output-weights": args.untie_embeddings_and_output_weights,
        "--disable-bias-linear": args.disable_bias_linear,
    }
    if args.position_embedding_type == "rope":
        values["--rotary-base"] = args.rotary_base
    else:  # learned positions: the table's size is part of the model
        values["--max-position-embeddings"] = args.max_position_embeddings or args.seq_length
    return values


def scheduler_flag_values(args) -> dict[str, tuple[str, object]]:
    """OptimizerParamScheduler state keys -> (the flag that sets it, this run's value)."""
    decay_flag = "--lr-decay-iters" if args.lr_decay_iters else "--train-iters"
    return {
        "max_lr": ("--lr", args.lr),
        "min_lr": ("--min-lr", args.min_lr),
        "lr_warmup_steps": ("--lr-warmup-iters", args.lr_warmup_iters),
        "lr_decay_steps": (decay_flag, args.lr_decay_iters or args.train_iters),
        "lr_decay_style": ("--lr-decay-style", args.lr_decay_style),
        "start_wd": ("--weight-decay", args.weight_decay),
        "end_wd": ("--weight-decay", args.weight_decay),
    }


def _find_checkpoint(root: str, requested: int | None, flag: str) -> tuple[int | None, str]:
    """(iteration to load or None, what was found) under ``root``; refuses ambiguous states."""
    finished = checkpoint_iterations(root)
    tracked = latest_iteration(root)
    if requested is not None:
        if requested not in finished:
            raise CheckpointError(f"--ckpt-step {requested}: {flag} {root} has no iter_{requested:07d} (finished checkpoints: {finished})")
        return requested, f"{flag} {root}: loading iteration {requested} (--ckpt-step; the tracker says {tracked})"
    if tracked is not None:
        if tracked not in finished:
            raise CheckpointError(
                f"{flag} {root}: the tracker names iteration {tracked} but {checkpoint_directory(root, tracked)} is missing "
                f"(finished checkpoints: {finished}); pass --ckpt-step to choose one"
            )
        return tracked, f"{flag} {root}: resuming from iteration {tracked}"
    if finished:
        raise CheckpointError(
            f"{flag} {root} holds checkpoints {finished} but no latest_checkpointed_iteration.txt: refusing to guess. "
            f"Pass --ckpt-step {finished[-1]} to resume from the latest of them, or another directory to start fresh"
        )
    return None, f"{flag} {root}: no checkpoint there; training starts from iteration 0"


def _parse_saved(argv: list[str], source: str):
    """(model args, TP size) of a checkpoint's command line."""
    from .arguments import flag_value, parse_model_args

    try:
        return parse_model_args(argv), int(flag_value(argv, "--tensor-model-parallel-size", "1"))
    except (SystemExit, ValueError):
        raise CheckpointError(f"{source}: its model flags no longer parse (above); cannot compare them with this run's") from None


def _check_same_model(root: str, iteration: int, args, tokenizer) -> None:
    """Refuse a checkpoint whose architecture, tokenizer or padded vocabulary differ from this run's."""
    record = read_run_record(root, iteration)
    if record is None:
        return  # checkpoints without args.json (made by hand) cannot be compared
    source = os.path.join(checkpoint_directory(root, iteration), "args.json")
    saved, saved_tp = _parse_saved(record["argv"], source)
    before, now = architecture(saved), architecture(args)
    differing = [f"{flag} {before.get(flag)} (checkpoint) vs {now.get(flag)} (this run)" for flag in sorted(set(before) | set(now)) if before.get(flag) != now.get(flag)]
    if differing:
        raise CheckpointError(f"{root} iteration {iteration} was trained with another model: {'; '.join(differing)}")
    digest = record.get("tokenizer_sha256")
    if digest and args.tokenizer_model and os.path.isfile(args.tokenizer_model) and file_sha256(args.tokenizer_model) != digest:
        raise CheckpointError(
            f"--tokenizer-model {args.tokenizer_model} is not the tokenizer {root} was trained with "
            f"(its args.json names {saved.tokenizer_model}; contents differ)"
        )
    before_rows = embedding_rows(saved, tokenizer.vocab_size, saved_tp)
    now_rows = embedding_rows(args, tokenizer.vocab_size, args.tensor_model_parallel_size)
    if before_rows != now_rows:  # megatron-core would load the embedding with another row count silently
        raise CheckpointError(
            f"{root} was trained with a padded vocabulary of {before_rows} rows (--tensor-model-parallel-size "
            f"{saved_tp}); this run would use {now_rows}: pass --vocab-size {before_rows}"
        )


def _check_same_schedule(root: str, iteration: int, args) -> None:
    """Upstream's rule: schedule flags that differ from the checkpoint's need
    --override-opt_param-scheduler (flags win) or --use-checkpoint-opt_param-scheduler (checkpoint wins)."""
    if args.override_opt_param_scheduler or args.use_checkpoint_opt_param_scheduler:
        return
    saved = dist_checkpointing.load_common_state_dict(checkpoint_directory(root, iteration)).get("scheduler", {})
    differing = {}
    for key, (flag, value) in scheduler_flag_values(args).items():
        if key in saved and saved[key] != value and flag not in differing:
            differing[flag] = f"{flag} {value} (this run) vs {saved[key]} (checkpoint)"
    if differing:
        raise CheckpointError(
            f"{root} iteration {iteration} was trained with another schedule: {'; '.join(differing.values())}. "
            "Pass --override-opt_param-scheduler to use this run's flags (the step count continues from the checkpoint), "
            "or --use-checkpoint-opt_param-scheduler to keep the checkpoint's schedule"
        )


def _check_same_recipe(root: str, iteration: int, args) -> str | None:
    """Refuse to continue a checkpoint with other FP4 arithmetic than it was trained with, unless
    --override-fp4-recipe says that is meant; returns the note for the log when it is. The
    comparison is of the effective recipes (every field, presets' defaults resolved), so a
    changed default between versions is caught as well as a changed flag. Checkpoints whose
    args.json predates the record cannot be compared."""
    from .checkpointing import recipe_change_summary, recipe_record
    from .fp4_flags import bf16_layers

    record = read_run_record(root, iteration)
    if record is None or "fp4" not in record:
        return None
    summary = recipe_change_summary(record["fp4"], recipe_record(args.fp4_quant_recipe, bf16_layers(args, args.num_layers)))
    if summary is None:
        return None
    if args.override_fp4_recipe:
        return f"--override-fp4-recipe: continuing with this run's FP4 arithmetic, which differs from the checkpoint's: {summary}"
    raise CheckpointError(
        f"{root} iteration {iteration} was trained with other FP4 arithmetic: {summary}. Give the flags that reproduce "
        "the checkpoint's recipe (e.g. --fp4-occ-compensation exact), or --override-fp4-recipe to continue with this run's"
    )


def _check_save_directory(args, plan: ResumePlan) -> None:
    """Never write over (or past) checkpoints in --save that this run did not resume from."""
    if not args.save or args.overwrite_checkpoints:
        return
    existing = checkpoint_iterations(args.save)
    resumed_here = plan.root is not None and not plan.weights_only and os.path.realpath(plan.root) == os.path.realpath(args.save)
    foreign = [i for i in existing if not resumed_here or i > plan.iteration]
    if foreign:
        raise CheckpointError(
            f"--save {args.save} holds checkpoints {foreign} that this run did not resume from; its saves would overwrite or "
            f"supersede them. Resume with --load {args.save}, choose another --save, or pass --overwrite-checkpoints"
        )


def plan_resume(args, tokenizer) -> ResumePlan:
    """Decide what the run loads (--load, --ckpt-step, --finetune, a requeued fine-tune's own
    --save) and check it against the flags; raises CheckpointError naming flags and values."""
    if args.finetune and args.save and latest_iteration(args.save) is not None:
        iteration, found = _find_checkpoint(args.save, None, "--save")
        plan = ResumePlan(args.save, iteration, False, found + " (a requeued --finetune run continues from its own checkpoints)")
    elif args.finetune:
        if not args.load:
            raise CheckpointError("--finetune needs --load with a finished checkpoint")
        iteration, found = _find_checkpoint(args.load, args.ckpt_step, "--load")
        if iteration is None:
            raise CheckpointError(f"--finetune: {found.split(': ', 1)[1]}; it needs a finished checkpoint in --load")
        plan = ResumePlan(args.load, iteration, True, f"--load {args.load}: the weights of iteration {iteration}; training starts at iteration 0 (--finetune)")
    elif args.load:
        iteration, found = _find_checkpoint(args.load, args.ckpt_step, "--load")
        plan = ResumePlan(args.load if iteration is not None else None, iteration, False, found)
    else:
        plan = ResumePlan(None, None, False, "no --load: training starts from iteration 0")
    if plan.root is not None:
        verify_checkpoint(checkpoint_directory(plan.root, plan.iteration))
        _check_same_model(plan.root, plan.iteration, args, tokenizer)
        if not plan.weights_only:
            _check_same_schedule(plan.root, plan.iteration, args)
            note = _check_same_recipe(plan.root, plan.iteration, args)
            if note:
                plan = dataclasses.replace(plan, found=f"{plan.found}; {note}")
            if plan.iteration > args.train_iters:
                raise CheckpointError(
                    f"--train-iters {args.train_iters} is below the checkpoint's iteration {plan.iteration} ({plan.root}): nothing to train"
                )
    _check_save_directory(args, plan)
    return plan
