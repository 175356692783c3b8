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
# Pinned versions (megatron_fp4/tools/debian_corpus.py, PINNED_PACKAGES): one changed package file
# reshuffles every document. LATEST=1 takes the mirror's current versions instead (a different corpus).
if [ -n "${LATEST:-}" ]; then
  packages=$("$python" -m megatron_fp4.tools.debian_corpus --pins | sed 's/=[^ ]*//g')
else
  packages=$("$python" -m megatron_fp4.tools.debian_corpus --pins)
fi
if [ -e "$out/debs" ] && [ -n "$(ls -A "$out/debs")" ]; then
  echo "error: $out/debs is not empty; choose another OUT_DIR or remove it yourself" >&2
  exit 2
fi
mkdir -p "$out/debs" "$out/root"
# shellcheck disable=SC2086
if ! (cd "$out/debs" && apt-get download $packages); then
  echo "error: apt-get download $packages failed: a pinned version may have left the mirror (apt-cache madison NAME lists" \
       "what it has; run apt-get update first). LATEST=1 builds from the current versions: a different corpus from the one" \
       "docs/runs/corpus describes" >&2
  exit 2
fi
for deb in "$out"/debs/*.deb; do dpkg-deb -x "$deb" "$out/root"; done
"$python" -m megatron_fp4.tools.debian_corpus "$out/root" "$out" --debs "$out/debs"
# the tokenizer is trained on the training split only; the held-out split is tokenized with it
"$python" tools/preprocess_data.py --input "$out/train.jsonl" --json-keys text --output-prefix "$out/train" \
    --train-tokenizer --vocab-size "$vocab"
"$python" tools/preprocess_data.py --input "$out/heldout.jsonl" --json-keys text --output-prefix "$out/heldout" \
    --tokenizer-model "$out/tokenizer.json"
echo "data: $out/train_text_document (held out: $out/heldout_text_document; tokenizer $out/tokenizer.json)"
