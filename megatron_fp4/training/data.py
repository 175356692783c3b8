"""Training data: megatron-core's GPTDataset over indexed .bin/.idx files, cut into micro-batches.

Datasets come from ``BlendedMegatronDatasetBuilder`` (blends, train/valid/test split, shuffled
sample index), built identically on every rank. The sample order is a pure function of the seed,
so resuming at ``consumed_samples`` continues exactly where an uninterrupted run would be.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.datasets.blended_megatron_dataset_builder import BlendedMegatronDatasetBuilder
from megatron.core.datasets.gpt_dataset import GPTDataset, GPTDatasetConfig, MockGPTDataset
from megatron.core.datasets.utils import get_blend_from_list

from .indexed_data import DataError, check_dataset, split_matrix

__all__ = ["build_datasets", "check_data", "micro_batches"]


def data_prefixes(data_path: list[str]) -> list[str]:
    """The dataset prefixes of --data-path (plain prefixes, or weight/prefix pairs)."""
    prefixes, _weights = get_blend_from_list(data_path)
    return list(prefixes)


def needs_validation(args) -> bool:
    return bool(args.eval_interval and args.eval_iters > 0)


def check_data(args, tokenizer, log) -> bool:
    """Validate every --data-path prefix against --split and the tokenizer, once (rank 0 reads,
    every rank learns the verdict); returns whether the run has a validation split to evaluate."""
    if args.mock_data:
        log("data: --mock-data (synthetic sequences from megatron-core's MockGPTDataset)")
        return needs_validation(args)
    verdict = [None]
    if dist.get_rank() == 0:
        try:
            verdict = [("ok", [check_dataset(prefix, args.split, tokenizer.vocab_size, args.tokenizer_model) for prefix in data_prefixes(args.data_path)])]
        except DataError as error:
            verdict = [("error", str(error))]
    dist.broadcast_object_list(verdict, src=0)
    status, payload = verdict[0]
    if status == "error":
        raise DataError(payload)
    for note in payload:
        log(note)
    has_validation_share = split_matrix(args.split)[1] is not None
    if needs_validation(args) and not has_validation_share:
        log(f"--split {args.split} gives validation no share: no evaluation in this run")
    return needs_validation(args) and has_validation_share


def build_datasets(args, tokenizer):
    """(train, valid) GPTDatasets sized for the whole run, from --data-path and --split
    (--mock-data: megatron-core's MockGPTDataset, synthetic token sequences)."""
    config = GPTDatasetConfig(
        random_seed=args.seed,
        sequence_length=args.seq_length,
        blend=None if args.mock_data else get_blend_from_list(args.data_path),
        split=args.split,
        tokenizer=tokenizer,
        reset_position_ids=False,
        reset_attention_mask=False,
        eod_mask_loss=False,
        create_attention_mask=False,
    )
    evaluations = args.train_iters // args.eval_interval + 1
    sizes = [args.train_iters * args.global_batch_size, evaluations * args.eval_iters * args.global_batch_size, None]
    dataset_class = MockGPTDataset if args.mock_data else GPTDataset
    train, valid, _ = BlendedMegatronDatasetBuilder(dataset_class, sizes, lambda: True, config).build()
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
