#!/usr/bin/env bash
# Download (Debian) and preprocess the reproduction corpus: KJV Bible + fortunes + Python docs.
#   bash examples/reproduce/prepare_corpus.sh [OUT_DIR=data/reproduce]
# Needs apt-get (Debian/Ubuntu sources) and the package installed (bash scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-data/reproduce}"
python="${PYTHON:-.venv/bin/python}"
mkdir -p "$out/debs" "$out/root"
(cd "$out/debs" && apt-get download bible-kjv bible-kjv-text fortunes python3.11-doc)
for deb in "$out"/debs/*.deb; do dpkg-deb -x "$deb" "$out/root"; done
"$python" examples/reproduce/build_corpus.py "$out/root" "$out/corpus.jsonl"
"$python" tools/preprocess_data.py --input "$out/corpus.jsonl" --json-keys text \
    --output-prefix "$out/corpus" --train-tokenizer --vocab-size 8192
echo "data: $out/corpus_text_document (tokenizer $out/tokenizer.json)"
