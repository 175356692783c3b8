#!/usr/bin/env bash
# Launch FP4 (or BF16) pretraining on this node's GPUs (or CPU) with torchrun.
# Usage: examples/pretrain_gpt.sh [--fp4 ...] <Megatron-LM pretrain_gpt.py flags>
#   Two routes, the same flags:
#   - MEGATRON_LM_DIR set (a Megatron-LM patched by `python -m megatron_fp4.megatron_lm.checkout`):
#     upstream's own pretrain_gpt.py with megatron-fp4's recipes (its full training loop);
#   - otherwise megatron-fp4's light trainer (python -m megatron_fp4.pretrain_gpt).
#   NPROC_PER_NODE (default: number of GPUs, or 1 without GPUs), NNODES, NODE_RANK,
#   MASTER_ADDR, MASTER_PORT: the usual torchrun settings. PYTHON: the interpreter
#   (default: the repository's .venv, else python3).
# Runs in the caller's directory: relative --data-path, --save, --load resolve where you are.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$( [ -x "$REPO/.venv/bin/python" ] && echo "$REPO/.venv/bin/python" || echo python3 )}"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"  # the package, also when it is not installed
if [ -n "${MEGATRON_LM_DIR:-}" ]; then
  if [ ! -f "$MEGATRON_LM_DIR/.megatron_fp4_patched" ]; then
    echo "error: MEGATRON_LM_DIR=$MEGATRON_LM_DIR is not a Megatron-LM patched by megatron-fp4;" \
         "run: $PYTHON -m megatron_fp4.megatron_lm.checkout --dir $MEGATRON_LM_DIR" >&2
    exit 2
  fi
  export PYTHONPATH="$MEGATRON_LM_DIR:$PYTHONPATH"
  ENTRY=("$MEGATRON_LM_DIR/pretrain_gpt.py")
else
  ENTRY=(-m megatron_fp4.pretrain_gpt)
fi
GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())")
export CUDA_DEVICE_MAX_CONNECTIONS=1  # megatron-core's communication overlap expects it
exec "$PYTHON" -m torch.distributed.run \
  --nproc_per_node "${NPROC_PER_NODE:-$([ "$GPUS" -gt 0 ] && echo "$GPUS" || echo 1)}" \
  --nnodes "${NNODES:-1}" --node_rank "${NODE_RANK:-0}" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  "${ENTRY[@]}" "$@"
