"""Pretrain a GPT/LLaMA model with FP4 linear layers: ``python -m megatron_fp4.pretrain_gpt ...``.

Takes Megatron-LM's ``pretrain_gpt.py`` flags (see ``megatron_fp4.training.arguments``) plus the
FP4 group (``--fp4``, ``--fp4-recipe``, ...). Run one process per GPU with torchrun, or a single
process on CPU (gloo).
"""

from __future__ import annotations

import torch.distributed as dist

from .training.arguments import parse_args
from .training.trainer import pretrain


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    if not args.data_path or not args.tokenizer_model:
        raise SystemExit("error: --data-path and --tokenizer-model are required (tools/preprocess_data.py makes both)")
    try:
        return pretrain(args)
    finally:
        if dist.is_initialized():
            from megatron.core import parallel_state

            parallel_state.destroy_model_parallel()
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
