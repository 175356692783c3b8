"""Jobs for test_plan: build the trainer's model for real and count what each rank holds."""

from megatron_fp4.training.arguments import parse_args, transformer_config_from_args


class FixedVocabTokenizer:
    vocab_size = 1000


def count_parameters_job(flags: list[str]) -> int:
    from megatron_fp4.training.trainer import build_model

    args = parse_args(flags)
    model = build_model(args, transformer_config_from_args(args), FixedVocabTokenizer())
    return sum(p.numel() for p in model.parameters())
