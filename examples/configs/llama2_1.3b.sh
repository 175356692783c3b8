# LLaMA-2-style 1.3B (24 layers, hidden 2048, 16 heads, FFN 5504): 1.35B parameters.
# Documented layouts: 8 GPUs (TP 1, DP 8, micro-batch 4), 16, 32, 64 GPUs (DP only).
source "$(dirname "${BASH_SOURCE[0]}")/llama2_common.sh"
MODEL_ARGS="--num-layers 24 --hidden-size 2048 --num-attention-heads 16 --ffn-hidden-size 5504 $LLAMA_ARGS"
PARALLEL_ARGS="--tensor-model-parallel-size ${TP:-1} --pipeline-model-parallel-size ${PP:-1} --micro-batch-size ${MICRO_BATCH:-4}"
GPU_COUNTS="8 16 32 64"
