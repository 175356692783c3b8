"""Bad data fails at start-up naming the file: missing, truncated or corrupted .bin/.idx, splits
without documents (megatron-core loops forever on them), token ids beyond the tokenizer;
preprocessing never leaves half a dataset or replaces a tokenizer in use."""

import os
import shutil
import struct
import subprocess
import sys

import numpy
import pytest

from megatron_fp4.tools import preprocess_data as preprocess
from megatron_fp4.training.indexed_data import DataError, check_dataset, read_index

from training.test_pretrain import argv, run


def copy_dataset(prefix: str, directory) -> str:
    target = os.path.join(directory, os.path.basename(prefix))
    for suffix in (".bin", ".idx"):
        shutil.copy(prefix + suffix, target + suffix)
    return target


def test_a_valid_dataset_passes(corpus):
    prefix, tokenizer = corpus
    summary = read_index(prefix)
    assert summary.documents == 300 and summary.sequence_lengths.min() > 0
    assert "300 documents (train 291, valid 9, test 0)" in check_dataset(prefix, "969,30,1", 400, tokenizer)


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: os.remove(p + ".bin"), r"\.bin does not exist"),
        (lambda p: os.truncate(p + ".bin", os.path.getsize(p + ".bin") - 10), r"\.bin: sequence \d+ ends at byte \d+ but the file has"),
        (lambda p: os.truncate(p + ".idx", 100), r"\.idx: 300 sequences and 301 document entries need \d+ bytes, found 100"),
        (lambda p: open(p + ".idx", "r+b").write(b"NOTANIDX!"), r"\.idx: not a Megatron index"),
        (lambda p: _write_at(p + ".idx", 34, struct.pack("<i", -5)), r"\.idx: negative sequence length -5"),
        (lambda p: _write_at(p + ".idx", 34 + 4 * 300 + 8 * 7, struct.pack("<q", 10**9)), r"\.bin: sequence 7 ends at byte"),
    ],
    ids=["missing-bin", "truncated-bin", "truncated-idx", "bad-magic", "negative-size", "pointer-outside"],
)
def test_damaged_files_are_named(corpus, tmp_path, damage, message):
    prefix = copy_dataset(corpus[0], tmp_path)
    damage(prefix)
    with pytest.raises(DataError, match=message):
        read_index(prefix)


def _write_at(path: str, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_the_trainer_reports_a_damaged_index_once_and_without_traceback(corpus, tmp_path):
    prefix = copy_dataset(corpus[0], tmp_path)
    os.truncate(prefix + ".bin", 1000)
    with pytest.raises(SystemExit, match=r"error: .*corpus_text_document\.bin: sequence \d+ ends at byte"):
        run(corpus, f"--train-iters 3 --data-path {prefix}")


def tiny_corpus(tmp_path, documents: int):
    text = "\n\n".join(f"document {d} has a few words in it." for d in range(documents))
    (tmp_path / "tiny.txt").write_text(text)
    return preprocess.main(["--input", str(tmp_path / "tiny.txt"), "--output-prefix", str(tmp_path / "tiny"), "--train-tokenizer", "--vocab-size", "300"])


def test_a_split_without_documents_fails_instead_of_looping(corpus, tmp_path):
    """11 documents with --split 969,30,1: the validation split gets none; megatron-core's
    GPTDataset would count epochs forever. Run in a subprocess with a deadline: a hang fails."""
    prefix = tiny_corpus(tmp_path, 11)
    flags = argv(corpus, f"--train-iters 3 --data-path {prefix} --tokenizer-model {tmp_path / 'tokenizer.json'}")
    result = subprocess.run(
        [sys.executable, "-m", "megatron_fp4.pretrain_gpt", *flags], capture_output=True, text=True, timeout=120,
        env={**os.environ, "MASTER_PORT": "0"},
    )
    assert result.returncode != 0
    assert "--split '969,30,1' leaves the valid split" in result.stderr and "(train 11, valid 0, test 0)" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_validation_share_trains_without_evaluation(corpus, capsys):
    records = run(corpus, "--train-iters 3 --split 100,0,0 --eval-interval 1")
    assert all("validation loss" not in r for r in records)
    assert "gives validation no share: no evaluation in this run" in capsys.readouterr().out


def test_token_ids_beyond_the_tokenizer_are_refused(corpus, tmp_path):
    prefix, tokenizer = corpus
    tiny_corpus(tmp_path, 40)  # its tokenizer has fewer tokens than the corpus uses
    with pytest.raises(SystemExit, match=rf"{prefix}\.bin holds token id \d+, but --tokenizer-model {tmp_path}/tokenizer.json has 300 tokens"):
        run(corpus, f"--train-iters 3 --data-path {prefix} --tokenizer-model {tmp_path / 'tokenizer.json'}")


def test_the_largest_token_id_is_cached_and_refreshed(corpus, tmp_path):
    prefix = copy_dataset(corpus[0], tmp_path)
    check_dataset(prefix, "1", 400, "t.json")
    assert os.path.exists(prefix + ".stats.json")
    tokens = numpy.memmap(prefix + ".bin", dtype=numpy.uint16, mode="r+")
    tokens[3] = 399
    tokens.flush()
    os.utime(prefix + ".bin", ns=(1, 1))  # another modification time: the cache must not answer
    with pytest.raises(DataError, match="holds token id 399"):
        check_dataset(prefix, "1", 399, "t.json")


def test_preprocess_does_not_replace_a_tokenizer_in_use(tmp_path):
    tiny_corpus(tmp_path, 20)
    before = (tmp_path / "tokenizer.json").read_bytes()
    with pytest.raises(SystemExit, match=r"--train-tokenizer would replace .*tokenizer.json.*--force"):
        preprocess.main(["--input", str(tmp_path / "tiny.txt"), "--output-prefix", str(tmp_path / "other"), "--train-tokenizer", "--vocab-size", "280"])
    assert (tmp_path / "tokenizer.json").read_bytes() == before
    preprocess.main(["--input", str(tmp_path / "tiny.txt"), "--output-prefix", str(tmp_path / "other"), "--train-tokenizer", "--vocab-size", "280", "--force"])


def test_a_failed_preprocess_leaves_no_half_dataset(tmp_path):
    tiny_corpus(tmp_path, 5)
    lines = ['{"text": "a complete document"}', '{"text": "another one"}', '{"text": "cut off in the mid']
    (tmp_path / "docs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit, match=r"docs\.jsonl:3: not a JSON object .*truncated line"):
        preprocess.main(["--input", str(tmp_path / "docs.jsonl"), "--output-prefix", str(tmp_path / "docs"), "--tokenizer-model", str(tmp_path / "tokenizer.json")])
    assert not [name for name in os.listdir(tmp_path) if name.startswith("docs_")]


def test_batched_tokenization_writes_the_ids_of_one_document_at_a_time(corpus, tmp_path, monkeypatch):
    """preprocess tokenizes batches of documents on all cores; the dataset holds exactly the ids
    that tokenizing each document alone gives, in document order (a batch size that does not
    divide the document count)."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    from megatron_fp4.training.tokenizer import BPETokenizer

    prefix, tokenizer_path = corpus
    texts = list(preprocess.read_documents([os.path.join(os.path.dirname(prefix), "corpus.txt")], None, "\n\n"))
    monkeypatch.setattr(preprocess, "DOCUMENTS_PER_BATCH", 7)
    again = preprocess.main(["--input", os.path.join(os.path.dirname(prefix), "corpus.txt"), "--output-prefix", str(tmp_path / "again"), "--tokenizer-model", tokenizer_path])
    tokenizer, dataset = BPETokenizer(tokenizer_path), IndexedDataset(again)
    assert len(dataset) == len(texts) == 300
    for index, text in enumerate(texts):
        assert dataset[index].tolist() == tokenizer.tokenize(text) + [tokenizer.eod]
