"""Checkpoints through megatron-core's dist_checkpointing: model, optimizer, scheduler, RNG, data position.

Crash safety: a checkpoint is written to ``iter_NNNNNNN.tmp`` and renamed into place only when
complete; the tracker file ``latest_checkpointed_iteration.txt`` is replaced atomically after
that. A crash mid-save leaves the previous checkpoint and tracker untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.mapping import ShardedObject

__all__ = ["save_checkpoint", "save_model_weights", "load_checkpoint", "load_model_weights", "latest_iteration", "write_run_args", "read_run_args"]

TRACKER = "latest_checkpointed_iteration.txt"


def _directory(root: str, iteration: int) -> str:
    return os.path.join(root, f"iter_{iteration:07d}")


RUN_ARGS = "args.json"


def write_run_args(root: str, argv: list[str]) -> None:
    """The trainer's command line next to its checkpoints: tools rebuild the model from it."""
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, RUN_ARGS + ".tmp"), "w") as f:
        json.dump({"argv": list(argv)}, f, indent=1)
    os.replace(os.path.join(root, RUN_ARGS + ".tmp"), os.path.join(root, RUN_ARGS))


def read_run_args(root: str) -> list[str] | None:
    path = os.path.join(root, RUN_ARGS)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)["argv"]


def latest_iteration(root: str) -> int | None:
    path = os.path.join(root, TRACKER)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return int(f.read().strip())


def _rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state["tracker"] = get_cuda_rng_tracker().get_states()
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


def save_checkpoint(root: str, iteration: int, model, optimizer, scheduler, consumed_samples: int) -> str:
    """Model, optimizer, scheduler, RNG and counters at ``iteration``, crash-safe."""
    state = _state(model, optimizer, scheduler, {"iteration": iteration, "consumed_samples": consumed_samples}, False)
    return _save_state(root, iteration, state)


def save_model_weights(root: str, iteration: int, model) -> str:
    """Only the model's weights (an imported checkpoint: load it with --finetune), crash-safe."""
    return _save_state(root, iteration, {"model": _unwrap(model).sharded_state_dict()})


def _save_state(root: str, iteration: int, state: dict) -> str:
    """Write to iter_N.tmp, rename when complete, then replace the tracker atomically."""
    final = _directory(root, iteration)
    temporary = final + ".tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(temporary, ignore_errors=True)
        os.makedirs(temporary)
    dist.barrier()
    dist_checkpointing.save(state, temporary)
    dist.barrier()
    if dist.get_rank() == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.replace(temporary, final)
        with open(os.path.join(root, TRACKER + ".tmp"), "w") as f:
            f.write(str(iteration))
        os.replace(os.path.join(root, TRACKER + ".tmp"), os.path.join(root, TRACKER))
    dist.barrier()
    return final


def load_model_weights(root: str, model) -> int:
    """Only the model's weights from the latest checkpoint under ``root`` (evaluation, export);
    dist_checkpointing reshards them to this run's TP/PP. Returns the checkpoint's iteration."""
    iteration = latest_iteration(root)
    if iteration is None:
        raise FileNotFoundError(f"--load {root}: no {TRACKER} (no finished checkpoint there)")
    loaded = dist_checkpointing.load({"model": _unwrap(model).sharded_state_dict()}, _directory(root, iteration))
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


def load_checkpoint(root: str, model, optimizer, scheduler) -> tuple[int, int]:
    """Restore the latest checkpoint under ``root``; returns (iteration, consumed_samples)."""
    iteration = latest_iteration(root)
    if iteration is None:
        raise FileNotFoundError(f"--load {root}: no {TRACKER} (no finished checkpoint there)")
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        # a fresh DistributedOptimizer has no Adam state yet, and its state_dict() asserts on the
        # step count; megatron-core's own loaders fill it with placeholders first, so do we
        if hasattr(inner, "_init_optimizer_states_with_dummy_values"):
            inner._init_optimizer_states_with_dummy_values()
    state = _state(model, optimizer, scheduler, {"iteration": 0, "consumed_samples": 0}, True)
    directory = _directory(root, iteration)
    saved_world = dist_checkpointing.load_common_state_dict(directory).get("world_size", dist.get_world_size())
    if saved_world != dist.get_world_size():  # per-rank RNG streams do not map onto another layout
        del state["rng"]
        if dist.get_rank() == 0:
            print(f"note: {root} was saved by {saved_world} ranks, this run has {dist.get_world_size()}: "
                  "model, optimizer and schedule are resharded; RNG states start fresh", flush=True)
    loaded = dist_checkpointing.load(state, directory)
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

        get_cuda_rng_tracker().set_states(rng["tracker"])
    return loaded["iteration"], loaded["consumed_samples"]
