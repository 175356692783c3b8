"""Training data: megatron-core's GPTDataset over indexed .bin/.idx files, cut into micro-batches.

Datasets come from ``BlendedMegatronDatasetBuilder`` (blends, train/valid/test split, shuffled
sample index), built identically on every rank. The sample order is a pure function of the seed,
so resuming at ``consumed_samples`` continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import torch
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig
from megatron.core.datasets.utils import get_blend_from_list

__all__ = ["build_datasets", "micro_batches"]


def build_datasets(args, tokenizer):
    """(train, valid) GPTDatasets sized for the whole run, from --data-path and --split."""
    config = GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=get_blend_from_list(args.data_path),
        split=args.split,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    evaluations = args.train_iters // args.eval_interval + 1
    sizes = [args.train_iters * args.global_batch_size, evaluations * args.eval_iters * args.global_batch_size, None]
    train, valid, _ = BlendedMegatronDatasetBuilder(GPTDataset, sizes, lambda: True, config).build()
    return train, valid


def micro_batches(dataset, first_sample: int, global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int, device) -> list[dict]:
    """This data-parallel rank's micro-batches of the global batch starting at ``first_sample``."""
    per_rank = global_batch_size // dp_size
    start = first_sample + dp_rank * per_rank
    batches = []
    for offset in range(0, per_rank, micro_batch_size):
        samples = [dataset[(start + offset + i) % len(dataset)] for i in range(micro_batch_size)]
        batches.append(
            {key: torch.stack([torch.as_tensor(s[key]) for s in samples]).to(device) for key in ("tokens", "labels", "loss_mask", "position_ids")}
        )
    return batches
