"""The trainer: Megatron-LM's command line on megatron-core's machinery, plus the FP4 flags."""
