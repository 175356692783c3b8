# LLaMA-2 7B (32 layers, hidden 4096, 32 heads, FFN 11008): 6.74B parameters.
# Documented layouts: TP 2 with sequence parallelism, DP = GPUs / 2; 16, 32, 64, 128 GPUs.
source "$(dirname "${BASH_SOURCE[0]}")/llama2_common.sh"
MODEL_ARGS="--num-layers 32 --hidden-size 4096 --num-attention-heads 32 --ffn-hidden-size 11008 $LLAMA_ARGS"
PARALLEL_ARGS="--tensor-model-parallel-size ${TP:-2} --pipeline-model-parallel-size ${PP:-1} --sequence-parallel --micro-batch-size ${MICRO_BATCH:-2}"
GPU_COUNTS="16 32 64 128"
