"""Text or JSONL -> Megatron indexed dataset (.bin/.idx) with an offline BPE tokenizer.

    python tools/preprocess_data.py --input corpus.txt --output-prefix data/corpus \
        --train-tokenizer --vocab-size 8192          # trains data/tokenizer.json first
    python tools/preprocess_data.py --input docs.jsonl --json-keys text \
        --output-prefix data/docs --tokenizer-model data/tokenizer.json

(``tools/preprocess_data.py`` runs this module; so does ``python -m megatron_fp4.tools.preprocess_data``.)

Documents: one per JSONL line (its --json-keys field), or for plain text, blocks separated by
blank lines (--text-document-separator). Each document ends with the end-of-document token.
Writes ``{prefix}_text_document.bin/.idx``: pass ``{prefix}_text_document`` to --data-path.
Both appear only when complete (written under temporary names, renamed at the end), so a failed
run leaves no ``.bin`` without its ``.idx``. ``--train-tokenizer`` refuses to replace an existing
``tokenizer.json`` (another dataset may be tokenized with it) unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Iterator

import numpy
import torch


def read_documents(paths: list[str], json_key: str | None, separator: str) -> Iterator[str]:
    for path in paths:
        if not os.path.exists(path):
            raise SystemExit(f"error: --input {path}: no such file")
        try:
            yield from _documents_of(path, json_key, separator)
        except UnicodeDecodeError as error:
            raise SystemExit(f"error: --input {path}: not UTF-8 text (byte {error.start}: {error.reason})") from None


def _documents_of(path: str, json_key: str | None, separator: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as f:
        if json_key or path.endswith(".jsonl") or path.endswith(".json"):
            key = json_key or "text"
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as error:
                    raise SystemExit(f"error: {path}:{number}: not a JSON object ({error}; a truncated line?)") from None
                if not isinstance(record, dict) or key not in record:
                    raise SystemExit(f"error: {path}:{number}: no field {key!r} (--json-keys)")
                if not isinstance(record[key], str):
                    raise SystemExit(f"error: {path}:{number}: field {key!r} is {type(record[key]).__name__}, not text")
                yield record[key]
        else:
            for block in f.read().split(separator):
                if block.strip():
                    yield block.strip()


DOCUMENTS_PER_BATCH = 256  # enough documents per batch to keep every core busy; few enough to stay small in memory


def _batches(texts: Iterator[str], size: int) -> Iterator[list[str]]:
    batch = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", nargs="+", required=True, help="text or JSONL files")
    parser.add_argument("--json-keys", default=None, help="JSONL field holding the text (default: text)")
    parser.add_argument("--text-document-separator", default="\n\n", help="plain text: what separates documents")
    parser.add_argument("--output-prefix", required=True)
    parser.add_argument("--tokenizer-model", default=None, help="an existing tokenizer.json")
    parser.add_argument("--train-tokenizer", action="store_true", help="train a BPE on the input first")
    parser.add_argument("--vocab-size", type=int, default=8192, help="with --train-tokenizer")
    parser.add_argument("--force", action="store_true", help="with --train-tokenizer: replace an existing tokenizer.json")
    return parser


def main(argv: list[str] | None = None) -> str:
    from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder, get_bin_path, get_idx_path

    from ..training.indexed_data import write_stats
    from ..training.tokenizer import BPETokenizer, train_bpe_tokenizer, write_hf_tokenizer_config

    args = build_parser().parse_args(argv)
    if bool(args.tokenizer_model) == args.train_tokenizer:
        raise SystemExit("error: give exactly one of --tokenizer-model PATH and --train-tokenizer")
    os.makedirs(os.path.dirname(os.path.abspath(args.output_prefix)), exist_ok=True)
    documents = lambda: read_documents(args.input, args.json_keys, args.text_document_separator)  # noqa: E731
    if args.train_tokenizer:
        path = os.path.join(os.path.dirname(os.path.abspath(args.output_prefix)), "tokenizer.json")
        if os.path.exists(path) and not args.force:
            raise SystemExit(
                f"error: --train-tokenizer would replace {path}, which other datasets may be tokenized with; "
                f"pass --tokenizer-model {path} to reuse it, another --output-prefix directory, or --force"
            )
        staged = path + ".partial"
        train_bpe_tokenizer(documents(), args.vocab_size, staged)
        os.replace(staged, path)
        tokenizer = BPETokenizer(path)
        write_hf_tokenizer_config(os.path.dirname(path), tokenizer)  # the directory is also a transformers tokenizer
    else:
        tokenizer = BPETokenizer(args.tokenizer_model)
    prefix = f"{args.output_prefix}_text_document"
    staged = f"{args.output_prefix}_text_document.partial"
    dtype = numpy.uint16 if tokenizer.vocab_size < 65500 else numpy.int32
    builder = IndexedDatasetBuilder(get_bin_path(staged), dtype=dtype)
    count = tokens = largest = 0
    try:
        for batch in _batches(documents(), DOCUMENTS_PER_BATCH):  # tokenized on all cores, written in order
            for ids in tokenizer.tokenize_batch(batch):
                ids = ids + [tokenizer.eod]
                builder.add_document(torch.tensor(ids), [len(ids)])
                count, tokens, largest = count + 1, tokens + len(ids), max(largest, max(ids))
        if count == 0:
            raise SystemExit(f"error: --input {args.input}: no documents found")
        builder.finalize(get_idx_path(staged))
    except BaseException:
        builder.data_file.close()
        for leftover in (get_bin_path(staged), get_idx_path(staged)):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
    os.replace(get_bin_path(staged), get_bin_path(prefix))  # the .idx last: it marks the pair complete
    os.replace(get_idx_path(staged), get_idx_path(prefix))
    write_stats(prefix, largest)
    print(f"wrote {prefix}.bin/.idx: {count} documents, {tokens} tokens, vocab {tokenizer.vocab_size} ({tokenizer.path})")
    return prefix


if __name__ == "__main__":
    main()
