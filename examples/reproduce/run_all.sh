#!/usr/bin/env bash
# The reproduction runs: one LLaMA-style model, data and seed, six precisions, run concurrently
# (round-robin over the visible GPUs, several per GPU), then the activation-fidelity capture on
# the BF16 model. Afterwards: python examples/reproduce/report.py LOGDIR
#
#   examples/reproduce/run_all.sh DATA_PREFIX TOKENIZER LOGDIR
#   env: ITERS (default 600), MINUTES (wall-clock cap per run, default 0 = none), PYTHON, RUNS
#        (subset, e.g. "bf16 paper"), SEED (default 1234), SEQUENTIAL=1 (one run at a time: OCC
#        runs crawl when they share a GPU), MODEL_FLAGS / TRAIN_FLAGS to override the defaults below,
#        FIDELITY=0 (no BF16 checkpoint, no activation-fidelity capture afterwards).
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
DATA=$1 TOKENIZER=$2 LOGDIR=$3
ITERS=${ITERS:-600} MINUTES=${MINUTES:-0} PYTHON=${PYTHON:-python3}
RUNS=${RUNS:-"bf16 paper direct paper_no_dge paper_no_occ nvfp4"}
SEED=${SEED:-1234} SEQUENTIAL=${SEQUENTIAL:-0} FIDELITY=${FIDELITY:-1}
# ~57M parameters: LLaMA-2 block (RMSNorm, SwiGLU, RoPE, no biases), untied embeddings
MODEL_FLAGS=${MODEL_FLAGS:-"--num-layers 12 --hidden-size 576 --num-attention-heads 9 --ffn-hidden-size 1536 \
 --seq-length 1024 --max-position-embeddings 1024 --swiglu --normalization RMSNorm --position-embedding-type rope \
 --untie-embeddings-and-output-weights --disable-bias-linear --hidden-dropout 0 --attention-dropout 0 --bf16"}
TRAIN_FLAGS=${TRAIN_FLAGS:-"--micro-batch-size 16 --global-batch-size 16 --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine \
 --lr-warmup-iters 50 --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0 --seed $SEED --split 98,2,0 \
 --log-interval 10 --eval-interval 100 --eval-iters 8 --fp4-health-interval 100"}
declare -A PRECISION=(
  [bf16]=""
  [paper]="--fp4 --fp4-recipe paper"
  [direct]="--fp4 --fp4-recipe direct"
  [paper_no_dge]="--fp4 --fp4-recipe paper --no-fp4-dge"
  [paper_no_occ]="--fp4 --fp4-recipe paper --no-fp4-occ"
  [paper_exact_occ]="--fp4 --fp4-recipe paper --fp4-occ-compensation exact"
  [paper_hot_occ]="--fp4 --fp4-recipe paper --fp4-occ-compensation hot_channels"
  [paper_fp8_occ]="--fp4 --fp4-recipe paper --fp4-occ-compensation fp8"
  [paper_inline_occ]="--fp4 --fp4-recipe paper --fp4-occ-compensation inline"
  [bf16_dge]="--fp4 --fp4-recipe bf16_dge"
  [paper_fwd_occ]="--fp4 --fp4-recipe paper --fp4-occ-compensation fp8 --no-fp4-occ-wgrad-compensation"
  [paper_dge_k3]="--fp4 --fp4-recipe paper --fp4-dge-k 3"
  [paper_dge_k10]="--fp4 --fp4-recipe paper --fp4-dge-k 10"
  [paper_dge_max1]="--fp4 --fp4-recipe paper --fp4-dge-max-derivative 1"
  [nvfp4]="--fp4-format e2m1 --fp4-recipe nvfp4"
  [mxfp4]="--fp4-format e2m1 --fp4-recipe mxfp4"
)
mkdir -p "$LOGDIR"
GPUS=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
EXIT=""
[ "$MINUTES" != 0 ] && EXIT="--exit-duration-in-mins $MINUTES"
# appended, so several invocations into one LOGDIR (SEQUENTIAL runs, one per call) all stay recorded
echo "runs: $RUNS; $ITERS iterations; GPUs: $GPUS; data: $DATA; model: $MODEL_FLAGS; training: $TRAIN_FLAGS" | tee -a "$LOGDIR/setup.txt"
i=0
for name in $RUNS; do
  [ -n "${PRECISION[$name]+set}" ] || { echo "unknown run $name (known: ${!PRECISION[*]})"; exit 2; }
  save=""
  [ "$name" = bf16 ] && [ "$FIDELITY" != 0 ] && save="--save $LOGDIR/ckpt_bf16"
  CUDA_VISIBLE_DEVICES=$((i % GPUS)) MASTER_PORT=$((29600 + i)) "$PYTHON" -m megatron_fp4.pretrain_gpt \
    $MODEL_FLAGS $TRAIN_FLAGS ${PRECISION[$name]} --train-iters "$ITERS" $EXIT --data-path "$DATA" \
    --tokenizer-model "$TOKENIZER" --tensorboard-dir "$LOGDIR/tb/$name" $save > "$LOGDIR/$name.log" 2>&1 &
  [ "$SEQUENTIAL" = 1 ] && wait
  i=$((i + 1))
done
wait
if [ -d "$LOGDIR/ckpt_bf16" ]; then
  CUDA_VISIBLE_DEVICES=0 MASTER_PORT=29700 "$PYTHON" "$REPO/examples/reproduce/activation_fidelity.py" "$LOGDIR/fidelity.json" \
    $MODEL_FLAGS $TRAIN_FLAGS --train-iters "$ITERS" --data-path "$DATA" --tokenizer-model "$TOKENIZER" \
    --load "$LOGDIR/ckpt_bf16" > "$LOGDIR/fidelity.log" 2>&1
fi
tail -n 3 "$LOGDIR"/*.log
