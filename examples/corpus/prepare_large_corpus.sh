#!/usr/bin/env bash
# The large offline corpus (issue 17): Debian packages -> shuffled JSONL with a held-out split ->
# tokenizer + indexed dataset. Needs apt-get (Debian sources) and the package (scripts/setup.sh).
#   bash examples/corpus/prepare_large_corpus.sh [OUT_DIR=data/large] [VOCAB=32768]
# Composition and licences: megatron_fp4/tools/debian_corpus.py (and OUT_DIR/manifest.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-data/large}"
vocab="${2:-32768}"
python="${PYTHON:-.venv/bin/python}"
# pinned versions: megatron_fp4/tools/debian_corpus.py, PINNED_PACKAGES (LATEST=1: the mirror's current ones)
# shellcheck disable=SC2046
bash examples/corpus/download_debs.sh "$out/debs" $("$python" -m megatron_fp4.tools.debian_corpus --pins)
mkdir -p "$out/root"
for deb in "$out"/debs/*.deb; do dpkg-deb -x "$deb" "$out/root"; done
"$python" -m megatron_fp4.tools.debian_corpus "$out/root" "$out" --debs "$out/debs"
# the tokenizer is trained on the training split only; the held-out split is tokenized with it
"$python" tools/preprocess_data.py --input "$out/train.jsonl" --json-keys text --output-prefix "$out/train" \
    --train-tokenizer --vocab-size "$vocab"
"$python" tools/preprocess_data.py --input "$out/heldout.jsonl" --json-keys text --output-prefix "$out/heldout" \
    --tokenizer-model "$out/tokenizer.json"
echo "data: $out/train_text_document (held out: $out/heldout_text_document; tokenizer $out/tokenizer.json)"
