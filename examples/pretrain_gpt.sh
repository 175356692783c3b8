#!/usr/bin/env bash
# Launch megatron_fp4.pretrain_gpt on this node's GPUs (or CPU) with torchrun.
# Usage: examples/pretrain_gpt.sh [--fp4 ...] <Megatron-LM pretrain_gpt.py flags>
#   NPROC_PER_NODE (default: number of GPUs, or 1 without GPUs), NNODES, NODE_RANK,
#   MASTER_ADDR, MASTER_PORT: the usual torchrun settings.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
export CUDA_DEVICE_MAX_CONNECTIONS=1  # megatron-core's communication overlap expects it
exec "$PYTHON" -m torch.distributed.run \
  --nproc_per_node "${NPROC_PER_NODE:-$([ "$GPUS" -gt 0 ] && echo "$GPUS" || echo 1)}" \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m megatron_fp4.pretrain_gpt "$@"
