#!/usr/bin/env bash
# A no-repetition training set for short runs (issue 17): the first documents of the large corpus's
# shuffled training split up to MILLION_CHARACTERS million characters of JSONL, with its own BPE tokenizer (trained on that
# subset only) and the large corpus's held-out split tokenized with it (never used for tuning).
#   bash examples/corpus/prepare_subset.sh [LARGE_DIR=data/large] [OUT_DIR=data/norepeat] [MILLION_CHARACTERS=36] [VOCAB=8192]
# LARGE_DIR comes from examples/corpus/prepare_large_corpus.sh (its train.jsonl / heldout.jsonl).
# TOKENIZER=path/tokenizer.json tokenizes with that tokenizer instead of training one (VOCAB unused).
# 36 million characters and vocabulary 8192 give 13.16M tokens (12.94M in the --split 98,2,0 training part): 600
# steps of 16 x 1024 tokens (9.83M) see every token at most once (docs/runs/norepeat/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
large="${1:-data/large}" out="${2:-data/norepeat}" million_characters="${3:-36}" vocab="${4:-8192}"
python="${PYTHON:-.venv/bin/python}"
for split in train heldout; do
  [ -f "$large/$split.jsonl" ] || { echo "error: $large/$split.jsonl missing (run examples/corpus/prepare_large_corpus.sh first)" >&2; exit 2; }
done
if [ -e "$out/train_text_document.bin" ]; then
  echo "error: $out/train_text_document.bin exists; choose another OUT_DIR or remove it yourself" >&2
  exit 2
fi
mkdir -p "$out"
# whole documents (one JSONL line each) until MILLION_CHARACTERS million characters (newlines counted) are passed
"$python" - "$large/train.jsonl" "$out/train.jsonl" "$million_characters" <<'PYTHON'
import sys
source, target, limit = sys.argv[1], sys.argv[2], int(sys.argv[3]) * 1_000_000
total = 0
with open(source, encoding="utf-8") as lines, open(target, "w", encoding="utf-8") as out:
    for line in lines:
        out.write(line)
        total += len(line)
        if total > limit:
            break
PYTHON
if [ -n "${TOKENIZER:-}" ]; then  # an existing tokenizer (e.g. the 36M subset's, so larger runs share its vocabulary)
  [ -f "$TOKENIZER" ] || { echo "error: TOKENIZER=$TOKENIZER does not exist" >&2; exit 2; }
  "$python" tools/preprocess_data.py --input "$out/train.jsonl" --json-keys text --output-prefix "$out/train" \
    --tokenizer-model "$TOKENIZER"
  if [ "$(realpath "$TOKENIZER")" != "$(realpath -m "$out/tokenizer.json")" ]; then
    cp "$TOKENIZER" "$out/tokenizer.json"
    if [ -f "$(dirname "$TOKENIZER")/tokenizer_config.json" ]; then cp "$(dirname "$TOKENIZER")/tokenizer_config.json" "$out/"; fi
  fi
else
  "$python" tools/preprocess_data.py --input "$out/train.jsonl" --json-keys text --output-prefix "$out/train" \
    --train-tokenizer --vocab-size "$vocab"
fi
"$python" tools/preprocess_data.py --input "$large/heldout.jsonl" --json-keys text --output-prefix "$out/heldout" \
  --tokenizer-model "$out/tokenizer.json"
rm "$out/train.jsonl"
echo "data: $out/train_text_document (held out: $out/heldout_text_document; tokenizer $out/tokenizer.json)"
