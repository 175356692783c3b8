"""Pretrain a GPT/LLaMA model with FP4 linear layers: ``python -m megatron_fp4.pretrain_gpt ...``.

Takes Megatron-LM's ``pretrain_gpt.py`` flags (see ``megatron_fp4.training.arguments``) plus the
FP4 group (``--fp4``, ``--fp4-recipe``, ...). Run one process per GPU with torchrun, or a single
process on CPU (gloo). Errors about the data, the checkpoints or a diverged run end the process
with one message (printed by rank 0) instead of a traceback on every rank.
"""

from __future__ import annotations

import os

import torch.distributed as dist

from .quantize import NonFiniteError
from .training.arguments import parse_args
from .training.checkpointing import CheckpointError
from .training.indexed_data import DataError
from .training.tokenizer import TokenizerError
from .training.trainer import TrainingDiverged, pretrain

EXPECTED_ERRORS = (CheckpointError, DataError, NonFiniteError, TokenizerError, TrainingDiverged)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if not (args.data_path or args.mock_data):
        raise SystemExit("error: --data-path is required (tools/preprocess_data.py makes it), or --mock-data for synthetic data")
    if args.tokenizer_type == "HuggingFaceTokenizer" and not args.tokenizer_model:
        raise SystemExit("error: --tokenizer-model is required (tools/preprocess_data.py makes one), or --tokenizer-type NullTokenizer --vocab-size N")
    try:
        return pretrain(args)
    except EXPECTED_ERRORS as error:
        if os.environ.get("RANK", "0") != "0":
            raise SystemExit(1) from None
        raise SystemExit(f"error: {error}") from error
    finally:
        if dist.is_initialized():
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
