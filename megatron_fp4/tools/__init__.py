"""Command-line tools: ``python -m megatron_fp4.tools.<name> --help``."""
