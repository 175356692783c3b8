"""Per-layer FP4 health in Megatron-LM's training loop: its log, TensorBoard and W&B writers.

Every ``--fp4-health-interval`` iterations (default ``--log-interval``; 0: off) the train step
runs inside ``health.collecting()``; after upstream's ``training_log`` the statistics of all
ranks are gathered (a collective: every rank calls ``log_health``) and written as
``fp4/<statistic>/<layer>`` scalars plus one summary line on the last rank.
"""

from __future__ import annotations

import contextlib

from .. import health

__all__ = ["health_collection", "log_health"]

_PENDING = {"iteration": None, "records": None}


def _interval(args) -> int:
    return args.log_interval if args.fp4_health_interval is None else args.fp4_health_interval


@contextlib.contextmanager
def health_collection(iteration: int):
    """Around upstream's train_step for the step that ends at ``iteration`` (1-based)."""
    from megatron.training import get_args

    args = get_args()
    interval = _interval(args)
    if getattr(args, "megatron_fp4_recipe", None) is None or not interval or iteration % interval:
        yield
        return
    with health.collecting() as records:
        yield
    _PENDING.update(iteration=iteration, records=records)


def log_health(iteration: int) -> dict | None:
    """After upstream's training_log: gather, print once, write TensorBoard/W&B scalars."""
    if _PENDING["iteration"] != iteration:
        return None
    records, _PENDING["iteration"], _PENDING["records"] = _PENDING["records"], None, None
    import torch.distributed as dist
    from megatron.training.global_vars import get_tensorboard_writer, get_wandb_writer

    stats = health.gather(records)
    if not stats or dist.get_rank() != dist.get_world_size() - 1:
        return stats
    print(health.format_summary(stats, iteration), flush=True)
    writer, wandb_writer = get_tensorboard_writer(), get_wandb_writer()
    scalars = {f"fp4/{statistic}/{layer}": value for layer, values in stats.items() for statistic, value in values.items()}
    if writer is not None:
        for name, value in scalars.items():
            writer.add_scalar(name, value, iteration)
    if wandb_writer is not None:
        wandb_writer.log(scalars, iteration)
    return stats
