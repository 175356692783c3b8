"""Checks of Megatron indexed datasets (``.bin``/``.idx``) before megatron-core reads them.

megatron-core trusts its inputs: a truncated or corrupted index ends in a traceback that names
no file, a split without documents makes ``GPTDataset`` loop forever computing its epochs, and
token ids beyond the tokenizer's vocabulary train silently (or crash inside the embedding). The
trainer runs these checks once at start-up, so bad data fails with the file, what was expected
and what was found.

Index layout (megatron-core's ``IndexedDatasetBuilder``, version 1): 9-byte magic
``MMIDIDX\\0\\0``, version (u64), dtype code (u8), sequence count (u64), document count (u64),
then int32 sequence lengths, int64 byte pointers into the ``.bin``, int64 document indices
(0, ..., sequence count).
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct

import numpy

__all__ = ["DataError", "IndexSummary", "read_index", "split_matrix", "split_document_counts", "max_token_id", "check_dataset"]

INDEX_MAGIC = b"MMIDIDX\x00\x00"
HEADER_BYTES = 9 + 8 + 1 + 8 + 8
TOKEN_DTYPES = {1: numpy.uint8, 2: numpy.int8, 3: numpy.int16, 4: numpy.int32, 5: numpy.int64, 6: numpy.float64, 7: numpy.float32, 8: numpy.uint16}
SCAN_CHUNK_TOKENS = 1 << 26  # 128 MiB of uint16 per read when scanning for the largest token id


class DataError(ValueError):
    """An indexed dataset that megatron-core would misread; the message names the file."""


@dataclasses.dataclass(frozen=True)
class IndexSummary:
    """What the ``.idx`` says about its ``.bin`` (validated against it)."""

    prefix: str
    dtype: type
    sequence_lengths: numpy.ndarray
    document_indices: numpy.ndarray

    @property
    def documents(self) -> int:
        return len(self.document_indices) - 1

    def tokens_in_documents(self, begin: int, end: int) -> int:
        """Tokens held by documents [begin, end)."""
        first, last = int(self.document_indices[begin]), int(self.document_indices[end])
        return int(self.sequence_lengths[first:last].sum(dtype=numpy.int64))


def read_index(prefix: str) -> IndexSummary:
    """Read and validate ``prefix.idx`` against ``prefix.bin``; raises DataError naming the file."""
    idx_path, bin_path = prefix + ".idx", prefix + ".bin"
    for path in (idx_path, bin_path):
        if not os.path.isfile(path):
            raise DataError(f"--data-path {prefix}: {path} does not exist (tools/preprocess_data.py writes both .bin and .idx)")
    idx_bytes, bin_bytes = os.path.getsize(idx_path), os.path.getsize(bin_path)
    with open(idx_path, "rb") as f:
        header = f.read(HEADER_BYTES)
    if len(header) < HEADER_BYTES:
        raise DataError(f"{idx_path}: truncated: {idx_bytes} bytes, a header needs {HEADER_BYTES}")
    if header[:9] != INDEX_MAGIC:
        raise DataError(f"{idx_path}: not a Megatron index (expected magic {INDEX_MAGIC!r}, found {header[:9]!r})")
    version, code, sequences, documents = struct.unpack("<QBQQ", header[9:])
    if version != 1:
        raise DataError(f"{idx_path}: index version {version}; only version 1 is readable")
    if code not in TOKEN_DTYPES:
        raise DataError(f"{idx_path}: unknown token dtype code {code} (known: {sorted(TOKEN_DTYPES)})")
    expected = HEADER_BYTES + sequences * (4 + 8) + documents * 8
    if idx_bytes not in (expected, expected + sequences):  # + one mode byte per sequence (multimodal)
        raise DataError(f"{idx_path}: {sequences} sequences and {documents} document entries need {expected} bytes, found {idx_bytes} (truncated or corrupted)")
    dtype = TOKEN_DTYPES[code]
    index = numpy.memmap(idx_path, mode="r")
    lengths = numpy.frombuffer(index, numpy.int32, sequences, HEADER_BYTES)
    pointers = numpy.frombuffer(index, numpy.int64, sequences, HEADER_BYTES + 4 * sequences)
    document_indices = numpy.frombuffer(index, numpy.int64, documents, HEADER_BYTES + 12 * sequences)
    if sequences and lengths.min() < 0:
        raise DataError(f"{idx_path}: negative sequence length {int(lengths.min())} (corrupted index)")
    item = numpy.dtype(dtype).itemsize
    ends = pointers + lengths.astype(numpy.int64) * item
    if sequences and (pointers.min() < 0 or ends.max() > bin_bytes):
        worst = int(numpy.argmax(ends))
        raise DataError(
            f"{bin_path}: sequence {worst} ends at byte {int(ends[worst])} but the file has {bin_bytes} bytes "
            f"(truncated .bin, or an .idx of another .bin)"
        )
    expected_bin = int(lengths.sum(dtype=numpy.int64)) * item
    if bin_bytes != expected_bin:
        raise DataError(f"{bin_path}: the index describes {expected_bin} bytes of tokens, the file has {bin_bytes} (an .idx of another .bin?)")
    if documents < 1 or document_indices[0] != 0 or document_indices[-1] != sequences or (numpy.diff(document_indices) < 0).any():
        raise DataError(f"{idx_path}: document indices must rise from 0 to the sequence count {sequences} (corrupted index)")
    return IndexSummary(prefix, dtype, lengths, document_indices)


def split_matrix(split: str) -> list[tuple[float, float] | None]:
    """megatron-core's (begin, end) fractions of train/valid/test for ``--split`` (None: no share)."""
    from megatron.core.datasets.blended_megatron_dataset_config import convert_split_vector_to_split_matrix, parse_and_normalize_split

    try:
        return convert_split_vector_to_split_matrix(parse_and_normalize_split(split))
    except (AssertionError, ZeroDivisionError, ValueError):
        raise DataError(f"--split {split!r}: expected up to three non-negative weights such as 969,30,1 (not all zero)") from None


def split_document_counts(documents: int, split: str) -> list[tuple[int, int] | None]:
    """The document ranges megatron-core gives train/valid/test for ``--split`` (None: no share),
    with its own rounding, so they are the ranges it will build."""
    return [None if bounds is None else (int(round(bounds[0] * documents)), int(round(bounds[1] * documents))) for bounds in split_matrix(split)]


def _cache_path(prefix: str) -> str:
    return prefix + ".stats.json"


def max_token_id(summary: IndexSummary) -> int:
    """The largest token id in the ``.bin`` (cached next to it, keyed by the file's size and time)."""
    bin_path = summary.prefix + ".bin"
    stat = os.stat(bin_path)
    key = {"bin_bytes": stat.st_size, "bin_mtime_ns": stat.st_mtime_ns}
    try:
        with open(_cache_path(summary.prefix)) as f:
            cached = json.load(f)
        if {k: cached.get(k) for k in key} == key:
            return int(cached["max_token_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    tokens = numpy.memmap(bin_path, dtype=summary.dtype, mode="r") if stat.st_size else numpy.zeros(0, summary.dtype)
    largest = -1
    for start in range(0, len(tokens), SCAN_CHUNK_TOKENS):
        largest = max(largest, int(tokens[start : start + SCAN_CHUNK_TOKENS].max()))
    write_stats(summary.prefix, largest)
    return largest


def write_stats(prefix: str, largest_token_id: int) -> None:
    """Record the largest token id next to the data (best effort: read-only data is rescanned)."""
    stat = os.stat(prefix + ".bin")
    record = {"bin_bytes": stat.st_size, "bin_mtime_ns": stat.st_mtime_ns, "max_token_id": int(largest_token_id)}
    try:
        with open(_cache_path(prefix) + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(_cache_path(prefix) + ".tmp", _cache_path(prefix))
    except OSError:
        pass


def check_dataset(prefix: str, split: str, vocab_size: int, tokenizer_path: str) -> str:
    """Validate one ``--data-path`` prefix for a run; returns a line for the log.

    Raises DataError when megatron-core would misread the files, loop forever (a split that is
    used but holds no tokens) or train on ids the tokenizer cannot produce."""
    summary = read_index(prefix)
    ranges = split_document_counts(summary.documents, split)
    counts = ", ".join(f"{name} {0 if r is None else r[1] - r[0]}" for name, r in zip(("train", "valid", "test"), ranges))
    if ranges[0] is None:
        raise DataError(f"--split {split!r} gives the training split no share of {prefix} ({counts} documents)")
    for name, bounds in zip(("train", "valid"), ranges):
        # a train/valid split with a share but no tokens makes GPTDataset count epochs forever
        # (the test split is built without a sample count, so an empty one is harmless)
        if bounds is not None and summary.tokens_in_documents(*bounds) == 0:
            raise DataError(
                f"--split {split!r} leaves the {name} split of {prefix} with {bounds[1] - bounds[0]} documents "
                f"out of {summary.documents} ({counts}): use more data, or give {name} no share in --split"
            )
    largest = max_token_id(summary)
    if largest >= vocab_size:
        raise DataError(
            f"{prefix}.bin holds token id {largest}, but --tokenizer-model {tokenizer_path} has {vocab_size} tokens "
            f"(ids 0..{vocab_size - 1}): the data was made with another tokenizer"
        )
    return f"data {prefix}: {summary.documents} documents ({counts}), largest token id {largest} < vocabulary {vocab_size}"
