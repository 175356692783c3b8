"""Checkpoints through megatron-core's dist_checkpointing: model, optimizer, scheduler, RNG, data position.

Crash safety: a checkpoint is written to ``iter_NNNNNNN.tmp`` and renamed into place only when
complete; the tracker file ``latest_checkpointed_iteration.txt`` is replaced atomically after
that. A crash mid-save leaves the previous checkpoint and tracker untouched. The run's command
line (``args.json``) is part of each checkpoint and copied to the root with the tracker, so a run
that fails at start-up never changes what describes the checkpoints already there. A model with
NaN/Inf parameters is never saved.

Reading: every file a checkpoint's metadata refers to is checked (present, long enough) before
megatron-core reads it, and read errors name the iteration directory and the file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject

__all__ = [
    "CheckpointError", "save_checkpoint", "save_model_weights", "load_checkpoint", "load_model_weights", "latest_iteration",
    "checkpoint_iterations", "checkpoint_directory", "verify_checkpoint", "run_record", "read_run_args", "read_run_record",
    "file_sha256",
]

TRACKER = "latest_checkpointed_iteration.txt"
RUN_ARGS = "args.json"
_ITERATION_DIRECTORY = re.compile(r"^iter_(\d{7,})$")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, incomplete or unreadable; the message names the directory and file."""


def checkpoint_directory(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


def checkpoint_iterations(root: str) -> list[int]:
    """Iterations of the finished checkpoint directories under ``root`` (``.tmp`` ones excluded)."""
    if not os.path.isdir(root):
        return []
    found = (_ITERATION_DIRECTORY.match(name) for name in os.listdir(root))
    return sorted(int(m.group(1)) for m in found if m and os.path.isdir(os.path.join(root, m.group(0))))


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def recipe_record(recipe, bf16_layers: tuple[int, ...] = ()) -> dict | None:
    """The FP4 arithmetic a run trains with, every field spelled out (None: plain BF16). Kept in
    ``args.json`` because the command line alone does not fix it: a preset's defaults can change
    between versions (``paper``'s OCC compensation became FP8), and a resume must notice."""
    if recipe is None or not recipe.changes_linear:
        return None
    fields = dataclasses.asdict(recipe)
    fields.pop("check_finite", None)  # a debugging switch, not arithmetic
    if fields.get("grad_amax") == "current":  # the only arithmetic before the field existed (session 10):
        fields.pop("grad_amax")  # earlier checkpoints' records match, and resume
        fields.pop("grad_amax_margin", None)  # (the margin only shapes delayed scaling)
    return {"recipe": fields, "bf16_layers": list(bf16_layers)}


def _flatten(value, prefix: str = "") -> dict[str, object]:
    """{'recipe.occ.compensation': 'fp8', ...} of a nested record (None and lists stay leaves)."""
    if isinstance(value, dict):
        flat = {}
        for key, inner in value.items():
            flat.update(_flatten(inner, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def _describe_fp4(record: dict | None) -> str:
    if record is None:
        return "BF16 (no FP4)"
    if "transformer_engine" in record:
        return f"Transformer Engine's FP4 recipe {record['transformer_engine']!r}"
    return f"FP4 recipe {record['recipe'].get('name', '?')!r}"


def recipe_differences(saved: dict | None, now: dict | None) -> list[str]:
    """What differs between two ``recipe_record`` s, one line per field ("recipe.occ.compensation
    'exact' (checkpoint) vs 'fp8' (this run)"); a recipe's name alone is no difference (the same
    arithmetic under another name trains the same)."""
    if (saved is None) != (now is None) or (saved or {}).keys() != (now or {}).keys():
        return [f"{_describe_fp4(saved)} (checkpoint) vs {_describe_fp4(now)} (this run)"]
    before, after = _flatten(saved or {}), _flatten(now or {})
    return [
        f"{key} {before.get(key)!r} (checkpoint) vs {after.get(key)!r} (this run)"
        for key in sorted(set(before) | set(after)) if key != "recipe.name" and before.get(key) != after.get(key)
    ]


def recipe_change_summary(saved: dict | None, now: dict | None, shown: int = 6) -> str | None:
    """``recipe_differences`` as one line for an error or log message (None: the same arithmetic)."""
    differing = recipe_differences(saved, now)
    if not differing:
        return None
    return "; ".join(differing[:shown]) + (f"; and {len(differing) - shown} more" if len(differing) > shown else "")


_NOT_RECORDED = object()


def run_record(argv: list[str], tokenizer_path: str | None, fp4=_NOT_RECORDED) -> dict:
    """What ``args.json`` keeps: the command line (tools rebuild the model from it), the
    tokenizer's content hash (a resume with another tokenizer of the same size is refused) and,
    from the trainer, the effective FP4 recipe (``recipe_record``: a resume with other FP4
    arithmetic is refused; tools that only write weights leave it out)."""
    record = {"argv": list(argv)}
    if fp4 is not _NOT_RECORDED:
        record["fp4"] = fp4
    if tokenizer_path and os.path.isfile(tokenizer_path):
        record["tokenizer_sha256"] = file_sha256(tokenizer_path)
    return record


def _write_json_atomically(path: str, record: dict) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)


def read_run_record(root: str, iteration: int | None = None) -> dict | None:
    """``args.json`` of the checkpoint at ``iteration`` (default: the latest), else the root's copy."""
    iteration = latest_iteration(root) if iteration is None else iteration
    candidates = ([os.path.join(checkpoint_directory(root, iteration), RUN_ARGS)] if iteration is not None else []) + [os.path.join(root, RUN_ARGS)]
    for path in candidates:
        if os.path.exists(path):
            try:
                with open(path) as f:
                    record = json.load(f)
                record["argv"] = list(record["argv"])
            except (ValueError, KeyError, TypeError) as error:
                raise CheckpointError(f"{path}: not a readable args.json ({error})") from None
            return record
    return None


def read_run_args(root: str, iteration: int | None = None) -> list[str] | None:
    record = read_run_record(root, iteration)
    return None if record is None else record["argv"]


def latest_iteration(root: str) -> int | None:
    """The iteration the tracker file names (None without one); a damaged tracker is an error."""
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    if not text.isdigit():
        raise CheckpointError(f"{path}: expected an iteration number, found {text[:40]!r}; finished checkpoints there: {checkpoint_iterations(root)}")
    return int(text)


def verify_checkpoint(directory: str) -> None:
    """Check that every file the checkpoint's metadata refers to exists and is long enough.

    megatron-core would otherwise fail deep inside torch.distributed.checkpoint or pickle with a
    message that names no file (or blame the model flags for a truncated shard)."""
    if not os.path.isdir(directory):
        kept = [path for path in (directory + ".previous", directory + ".tmp") if os.path.isdir(path)]
        hint = f" (a save of this iteration was interrupted; {' and '.join(kept)} hold the old and the new copy: rename the one to keep to {os.path.basename(directory)})" if kept else ""
        raise CheckpointError(f"{directory}: no such checkpoint directory{hint}")
    for name in ("metadata.json", "common.pt", ".metadata"):
        if not os.path.isfile(os.path.join(directory, name)):
            raise CheckpointError(f"{directory}: {name} is missing (incomplete or not a torch_dist checkpoint)")
    from torch.distributed.checkpoint import FileSystemReader

    try:
        metadata = FileSystemReader(directory).read_metadata()
    except Exception as error:
        raise CheckpointError(f"{os.path.join(directory, '.metadata')}: unreadable ({type(error).__name__}: {error})") from None
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        path = os.path.join(directory, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing (the checkpoint's metadata refers to it)")
        found = os.path.getsize(path)
        if found < size:
            raise CheckpointError(f"{path}: truncated: the checkpoint's metadata needs {size} bytes, the file has {found}")
    try:
        dist_checkpointing.load_common_state_dict(directory)
    except Exception as error:
        raise CheckpointError(f"{os.path.join(directory, 'common.pt')}: unreadable ({type(error).__name__}: {error})") from None


def _load_sharded(state: dict, directory: str) -> dict:
    """dist_checkpointing.load with errors that name the directory (call verify_checkpoint first)."""
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException, not an Exception

    try:
        return dist_checkpointing.load(state, directory)
    except (Exception, CheckpointException) as error:
        lines = str(error).strip().splitlines() or [type(error).__name__]
        raise CheckpointError(f"{directory}: could not be loaded into this model: {lines[-1][:500]}") from error


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    from .cuda_graphs import rng_states_as

    state["tracker"] = rng_states_as(get_cuda_rng_tracker().get_states(), graphable=False)  # tensors, with or without CUDA graphs
    return state


def _unwrap(model):
    """The GPTModel inside megatron's DDP wrapper: its keys are the checkpoint's keys."""
    return getattr(model, "module", model)


def _optimizer_format(optimizer) -> dict:
    """The distributed optimizer saves in megatron-core's 'fully_reshardable' format: a checkpoint
    can resume at another TP/PP/DP (the default 'fully_sharded_model_space' fails to save here)."""
    inner = getattr(optimizer, "chained_optimizers", [optimizer])
    if any(type(o).__name__ == "DistributedOptimizer" for o in inner):
        return {"metadata": {"distrib_optim_sharding_type": "fully_reshardable"}}
    return {}


def _state(model, optimizer, scheduler, extra: dict, is_loading: bool) -> dict:
    model_state = _unwrap(model).sharded_state_dict()
    rank, world = dist.get_rank(), dist.get_world_size()
    return {
        "model": model_state,
        "optimizer": optimizer.sharded_state_dict(model_state, is_loading=is_loading, **_optimizer_format(optimizer)),
        "scheduler": scheduler.state_dict(),
        "rng": ShardedObject("rng_state", _rng_state(), (world,), (rank,), replica_id=0),
        "world_size": world,
        **extra,
    }


def _first_non_finite_parameter(model) -> str | None:
    """Name of a parameter holding NaN/Inf on any rank (None when all are finite)."""
    local = next((name for name, p in _unwrap(model).named_parameters() if not torch.isfinite(p).all()), None)
    flag = torch.tensor([float(local is not None)], device=next(_unwrap(model).parameters()).device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    names = [None] * dist.get_world_size()
    dist.all_gather_object(names, local)
    return next(name for name in names if name is not None)


def save_checkpoint(root: str, iteration: int, model, optimizer, scheduler, consumed_samples: int, record: dict) -> str:
    """Model, optimizer, scheduler, RNG and counters at ``iteration``, crash-safe; ``record`` is
    the run's args.json. Refuses a model with NaN/Inf parameters (it would become the latest)."""
    bad = _first_non_finite_parameter(model)
    if bad is not None:
        raise CheckpointError(f"not saving iteration {iteration} to {root}: parameter {bad} holds NaN/Inf (the last good checkpoint stays the latest)")
    state = _state(model, optimizer, scheduler, {"iteration": iteration, "consumed_samples": consumed_samples}, False)
    return _save_state(root, iteration, state, record)


def save_model_weights(root: str, iteration: int, model, record: dict) -> str:
    """Only the model's weights (an imported checkpoint: load it with --finetune), crash-safe."""
    return _save_state(root, iteration, {"model": _unwrap(model).sharded_state_dict()}, record)


def _save_state(root: str, iteration: int, state: dict, record: dict) -> str:
    """Write to iter_N.tmp (with its args.json), rename when complete, then replace the tracker
    and the root's args.json atomically."""
    final = checkpoint_directory(root, iteration)
    temporary = final + ".tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
    dist.barrier()
    dist_checkpointing.save(state, temporary)
    dist.barrier()
    if dist.get_rank() == 0:
        _write_json_atomically(os.path.join(temporary, RUN_ARGS), record)
        # an existing iter_N (a re-save of the same iteration, possibly the latest) is moved aside,
        # not deleted, until the new one is in place: no moment without a complete iter_N
        previous = final + ".previous"
        shutil.rmtree(previous, ignore_errors=True)
        if os.path.exists(final):
            os.replace(final, previous)
        os.replace(temporary, final)
        shutil.rmtree(previous, ignore_errors=True)
        with open(os.path.join(root, TRACKER + ".tmp"), "w") as f:
            f.write(str(iteration))
        os.replace(os.path.join(root, TRACKER + ".tmp"), os.path.join(root, TRACKER))
        _write_json_atomically(os.path.join(root, RUN_ARGS), record)
    dist.barrier()
    return final


def _iteration_to_load(root: str, iteration: int | None) -> int:
    iteration = latest_iteration(root) if iteration is None else iteration
    if iteration is None:
        raise CheckpointError(f"--load {root}: no {TRACKER} (no finished checkpoint there; finished iterations: {checkpoint_iterations(root)})")
    return iteration


def load_model_weights(root: str, model, iteration: int | None = None) -> int:
    """Only the model's weights from the checkpoint at ``iteration`` (default: the latest) under
    ``root`` (evaluation, export, --finetune); dist_checkpointing reshards them to this run's
    TP/PP. Returns the checkpoint's iteration."""
    iteration = _iteration_to_load(root, iteration)
    verify_checkpoint(checkpoint_directory(root, iteration))
    loaded = _load_sharded({"model": _unwrap(model).sharded_state_dict()}, checkpoint_directory(root, iteration))
    _unwrap(model).load_state_dict(loaded["model"])
    return iteration


@contextlib.contextmanager
def _torch_adam_step_kept(optimizer):
    """Work around megatron-core 0.16 loading a 'fully_reshardable' DistributedOptimizer state into
    torch's own Adam (no Apex/TE): distrib_optimizer.py load_parameter_state_from_fully_reshardable
    drops each parameter's "step" from the tensors it hands to _set_main_param_and_optimizer_states,
    which then copies every key of the optimizer state, "step" included (KeyError). The step was
    already set from the checkpoint just before, so handing the current one back is a no-op copy."""
    patched = []
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        original = getattr(inner, "_set_main_param_and_optimizer_states", None)
        if original is None:
            continue

        def with_step(model_param, tensors, inner=inner, original=original):
            group_index, group_order = inner.model_param_group_index_map[model_param]
            main_param = inner.optimizer.param_groups[group_index]["params"][group_order]
            state = inner.optimizer.state.get(main_param, {})
            if "step" in state and "step" not in tensors:
                tensors = {**tensors, "step": state["step"]}
            return original(model_param, tensors)

        inner._set_main_param_and_optimizer_states = with_step
        patched.append(inner)
    try:
        yield
    finally:
        for inner in patched:
            del inner._set_main_param_and_optimizer_states


def load_checkpoint(root: str, model, optimizer, scheduler, iteration: int | None = None) -> tuple[int, int]:
    """Restore the checkpoint at ``iteration`` (default: the latest) under ``root``; returns
    (iteration, consumed_samples)."""
    iteration = _iteration_to_load(root, iteration)
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        # a fresh DistributedOptimizer has no Adam state yet, and its state_dict() asserts on the
        # step count; megatron-core's own loaders fill it with placeholders first, so do we
        if hasattr(inner, "_init_optimizer_states_with_dummy_values"):
            inner._init_optimizer_states_with_dummy_values()
    state = _state(model, optimizer, scheduler, {"iteration": 0, "consumed_samples": 0}, True)
    directory = checkpoint_directory(root, iteration)
    verify_checkpoint(directory)
    saved_world = dist_checkpointing.load_common_state_dict(directory).get("world_size", dist.get_world_size())
    if saved_world != dist.get_world_size():  # per-rank RNG streams do not map onto another layout
        del state["rng"]
        if dist.get_rank() == 0:
            print(f"note: {root} was saved by {saved_world} ranks, this run has {dist.get_world_size()}: "
                  "model, optimizer and schedule are resharded; RNG states start fresh", flush=True)
    loaded = _load_sharded(state, directory)
    _unwrap(model).load_state_dict(loaded["model"])
    with _torch_adam_step_kept(optimizer):
        optimizer.load_state_dict(loaded["optimizer"])
    scheduler.load_state_dict(loaded["scheduler"])
    if "rng" in loaded:
        rng = loaded["rng"]
        torch.set_rng_state(rng["cpu"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state(rng["cuda"])
        from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

        from .cuda_graphs import rng_states_as

        tracker = get_cuda_rng_tracker()
        tracker.set_states(rng_states_as(rng["tracker"], graphable=bool(getattr(tracker, "use_cudagraphable_rng", False))))
    return loaded["iteration"], loaded["consumed_samples"]
