#!/usr/bin/env bash
# One GPU: Megatron-LM's own pretrain_gpt.py, patched (patches/megatron-lm), against megatron-fp4's
# trainer on the same config, data and seed, BF16 and FP4 `paper`; then the upstream FP4
# checkpoint exported to Hugging Face and its logits compared with the model's.
#   scripts/gpu_upstream_run.sh UPSTREAM_TREE DATA_PREFIX TOKENIZER_JSON OUT_DIR [ITERS]
#   env: PRECISIONS (default "bf16 paper"), ROUTES (default "upstream ours")
set -uo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
UPSTREAM_SOURCE=$1 DATA=$2 TOKENIZER=$3 OUT=$4 ITERS=${5:-100}
WORK=${WORK:-/tmp/megatron-fp4-upstream}
mkdir -p "$OUT" "$WORK"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" NPROC_PER_NODE=1
python3 -m megatron_fp4.megatron_lm.checkout --dir "$WORK/megatron-lm" --source "$UPSTREAM_SOURCE" | tail -2
MODEL="--num-layers 4 --hidden-size 512 --num-attention-heads 8 --ffn-hidden-size 1408 --seq-length 512 \
 --max-position-embeddings 512 --swiglu --normalization RMSNorm --position-embedding-type rope \
 --untie-embeddings-and-output-weights --disable-bias-linear --hidden-dropout 0 --attention-dropout 0 --bf16"
TRAIN="--micro-batch-size 8 --global-batch-size 16 --train-iters $ITERS --lr 1e-3 --min-lr 1e-4 --lr-decay-style cosine \
 --lr-warmup-iters 10 --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0 --seed 1234 --split 98,2,0 \
 --log-interval 1 --eval-interval $ITERS --eval-iters 4 --data-path $DATA --fp4-health-interval 50"
UPSTREAM="--tokenizer-type HuggingFaceTokenizer --tokenizer-model $(dirname "$TOKENIZER") --transformer-impl local \
 --no-rope-fusion --no-gradient-accumulation-fusion --no-masked-softmax-fusion --no-bias-swiglu-fusion --no-persist-layer-norm"
for precision in ${PRECISIONS:-bf16 paper}; do
  fp4=""; [ "$precision" = paper ] && fp4="--fp4-format e2m1 --fp4-recipe paper"
  save=""; [ "$precision" = paper ] && save="--save $WORK/upstream_ckpt --save-interval $ITERS"
  if [[ " ${ROUTES:-upstream ours} " == *" upstream "* ]]; then
    MEGATRON_LM_DIR="$WORK/megatron-lm" MASTER_PORT=29611 timeout 240 bash "$REPO/examples/pretrain_gpt.sh" \
      $MODEL $TRAIN $UPSTREAM $fp4 $save > "$OUT/upstream_$precision.log" 2>&1
    echo "upstream $precision: exit $?; $(grep -c 'lm loss' "$OUT/upstream_$precision.log") loss lines"
  fi
  if [[ " ${ROUTES:-upstream ours} " == *" ours "* ]]; then
    MASTER_PORT=29612 timeout 240 python3 -m megatron_fp4.pretrain_gpt $MODEL $TRAIN --tokenizer-model "$TOKENIZER" $fp4 \
      > "$OUT/ours_$precision.log" 2>&1
    echo "ours $precision: exit $?"
  fi
done
# the upstream torch_dist checkpoint -> Hugging Face, logits against the model loaded from it
python3 - "$WORK/upstream_ckpt" "$WORK/hf" "$TOKENIZER" $MODEL > "$OUT/export.log" 2>&1 <<'PY'
import sys, torch
from megatron_fp4.tools import convert_checkpoint as convert
load, output, tokenizer, *model = sys.argv[1:]
flags = [f for f in model if f not in ("--bf16",)] + ["--tokenizer-model", tokenizer]
convert.main(["export", "--load", load, "--output", output, "--dtype", "float32", "--force", "--", *flags])
import transformers
tokens = torch.randint(0, 8000, (2, 64))
with convert._Single():
    args, ours, tok = convert.load_megatron(load, flags)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ours = ours.to(device)  # megatron builds its linear layers on the GPU and the norms on the CPU
    with torch.no_grad():
        mine = ours(tokens.to(device), torch.arange(64, device=device).expand(2, 64), None)[..., : tok.vocab_size].float().cpu()
hf = transformers.LlamaForCausalLM.from_pretrained(output, torch_dtype=torch.float32, local_files_only=True).eval()
with torch.no_grad():
    theirs = hf(tokens).logits.float()
error = ((mine - theirs).norm() / theirs.norm()).item()
print(f"exported upstream checkpoint {load}: logits relative difference {error:.2e}")
PY
tail -n 2 "$OUT/export.log"
