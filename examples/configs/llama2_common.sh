# Shared by the LLaMA-2 paper configs (sourced; sets shell variables, runs nothing).
#
# Architecture: LLaMA-2 (Touvron et al. 2023): pre-RMSNorm, SwiGLU, RoPE, no biases, untied
# embeddings, vocabulary 32000. Training, as Wang et al. 2025 train their FP4 models (LLaMA-2
# architecture on DCLM text, up to 100B tokens; the paper follows LLaMA-2 / FP8-LM practice
# where it does not say): AdamW (0.9, 0.95, eps 1e-8), weight decay 0.1, gradient clip 1.0,
# peak lr 3e-4 with 2000 warm-up steps and cosine decay to 10%, sequence 2048, 2048 sequences
# (4.2M tokens) per step, 100B tokens = 23842 steps. Values the paper does not print in the
# text we could read are LLaMA-2's; check them against the paper before a costly run.
SEQ_LENGTH=${SEQ_LENGTH:-2048}
GLOBAL_BATCH=${GLOBAL_BATCH:-2048}
TRAIN_TOKENS=${TRAIN_TOKENS:-100000000000}
TRAIN_ITERS=${TRAIN_ITERS:-$(( (TRAIN_TOKENS + SEQ_LENGTH * GLOBAL_BATCH - 1) / (SEQ_LENGTH * GLOBAL_BATCH) ))}
LLAMA_ARGS="--swiglu --normalization RMSNorm --norm-epsilon 1e-5 --position-embedding-type rope \
 --untie-embeddings-and-output-weights --disable-bias-linear --hidden-dropout 0 --attention-dropout 0 \
 --seq-length $SEQ_LENGTH --max-position-embeddings $SEQ_LENGTH --init-method-std 0.02"
TRAIN_ARGS="--global-batch-size $GLOBAL_BATCH --train-iters $TRAIN_ITERS --lr 3e-4 --min-lr 3e-5 \
 --lr-decay-style cosine --lr-warmup-iters 2000 --weight-decay 0.1 --adam-beta1 0.9 --adam-beta2 0.95 \
 --adam-eps 1e-8 --clip-grad 1.0 --bf16 --use-distributed-optimizer \
 --log-interval 10 --eval-interval 1000 --eval-iters 20 --save-interval 1000"
# FP4 on (the paper's recipe); PRECISION=bf16 gives the BF16 twin with everything else equal
if [ "${PRECISION:-fp4}" = bf16 ]; then FP4_ARGS=""; else FP4_ARGS="--fp4-format e2m1 --fp4-recipe paper"; fi
