#!/usr/bin/env bash
# Download (Debian) and preprocess the reproduction corpus: KJV Bible + fortunes + Python docs.
#   bash examples/reproduce/prepare_corpus.sh [OUT_DIR=data/reproduce]
# Needs apt-get (Debian/Ubuntu sources) and the package installed (bash scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-data/reproduce}"
python="${PYTHON:-.venv/bin/python}"
# Pinned versions (examples/corpus/download_debs.sh): security updates change python3.11-doc (deb12u8 -> u9
# changed 4 of the corpus's 16,083 documents). These are the versions of the runs from session 6 on;
# sessions 1-5 did not record theirs.
bash examples/corpus/download_debs.sh "$out/debs" bible-kjv=4.38 bible-kjv-text=4.38 fortunes=1:1.99.1-7.3 python3.11-doc=3.11.2-6+deb12u9
mkdir -p "$out/root"
(cd "$out/debs" && sha256sum ./*.deb > ../packages.sha256)
for deb in "$out"/debs/*.deb; do dpkg-deb -x "$deb" "$out/root"; done
"$python" examples/reproduce/build_corpus.py "$out/root" "$out/corpus.jsonl"
"$python" tools/preprocess_data.py --input "$out/corpus.jsonl" --json-keys text \
    --output-prefix "$out/corpus" --train-tokenizer --vocab-size 8192
echo "data: $out/corpus_text_document (tokenizer $out/tokenizer.json)"
