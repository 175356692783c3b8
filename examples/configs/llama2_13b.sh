# LLaMA-2 13B (40 layers, hidden 5120, 40 heads, FFN 13824): 13.0B parameters.
# Documented layouts: TP 4 with sequence parallelism x PP 2, DP = GPUs / 8; 32, 64, 128, 256 GPUs.
source "$(dirname "${BASH_SOURCE[0]}")/llama2_common.sh"
MODEL_ARGS="--num-layers 40 --hidden-size 5120 --num-attention-heads 40 --ffn-hidden-size 13824 $LLAMA_ARGS"
PARALLEL_ARGS="--tensor-model-parallel-size ${TP:-4} --pipeline-model-parallel-size ${PP:-2} --sequence-parallel --micro-batch-size ${MICRO_BATCH:-1}"
GPU_COUNTS="32 64 128 256"
