#!/usr/bin/env bash
# One GPU: the trainer on a ~100M-parameter LLaMA-style config, BF16 then FP4 `paper`, with
# tokens/s from the trainer's own log. Usage: scripts/gpu_trainer_run.sh DATA_PREFIX TOKENIZER OUT
set -uo pipefail
DATA=$1 TOKENIZER=$2 OUT=$3
MODEL="--num-layers 12 --hidden-size 768 --num-attention-heads 12 --ffn-hidden-size 2048 --seq-length 1024 \
 --swiglu --normalization RMSNorm --position-embedding-type rope --untie-embeddings-and-output-weights \
 --disable-bias-linear --hidden-dropout 0 --attention-dropout 0 --bf16"
TRAIN="--micro-batch-size 8 --global-batch-size 16 --lr 6e-4 --min-lr 6e-5 --lr-decay-style cosine --lr-warmup-iters 20 \
 --weight-decay 0.1 --adam-beta2 0.95 --log-interval 20 --eval-interval 100 --eval-iters 4 --split 95,5,0 \
 --data-path $DATA --tokenizer-model $TOKENIZER"
timeout "${BF16_SECONDS:-150}" python3 -m megatron_fp4.pretrain_gpt $MODEL $TRAIN --train-iters "${BF16_ITERS:-300}" --tensorboard-dir "$OUT/tb_bf16" 2>&1 | grep -v "Warning\|warnings.warn" | tee "$OUT/bf16.log"
timeout "${FP4_SECONDS:-300}" python3 -m megatron_fp4.pretrain_gpt $MODEL $TRAIN --train-iters "${FP4_ITERS:-300}" --fp4 --fp4-health-interval 100 --tensorboard-dir "$OUT/tb_fp4" 2>&1 | grep -v "Warning\|warnings.warn" | tee "$OUT/fp4_paper.log"
