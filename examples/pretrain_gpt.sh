#!/usr/bin/env bash
# Launch megatron_fp4.pretrain_gpt on this node's GPUs (or CPU) with torchrun.
# Usage: examples/pretrain_gpt.sh [--fp4 ...] <Megatron-LM pretrain_gpt.py flags>
#   NPROC_PER_NODE (default: number of GPUs, or 1 without GPUs), NNODES, NODE_RANK,
#   MASTER_ADDR, MASTER_PORT: the usual torchrun settings. PYTHON: the interpreter
#   (default: the repository's .venv, else python3).
# Runs in the caller's directory: relative --data-path, --save, --load resolve where you are.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the package, also when it is not installed
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
export CUDA_DEVICE_MAX_CONNECTIONS=1  # megatron-core's communication overlap expects it
exec "$PYTHON" -m torch.distributed.run \
  --nproc_per_node "${NPROC_PER_NODE:-$([ "$GPUS" -gt 0 ] && echo "$GPUS" || echo 1)}" \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m megatron_fp4.pretrain_gpt "$@"
