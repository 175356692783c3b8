"""An offline tokenizer: byte-level BPE trained locally with Hugging Face ``tokenizers``.

No hub access is needed: the tokenizer is trained on the corpus being preprocessed and saved as
``tokenizer.json`` next to the data. The wrapper gives megatron-core's datasets what they read
(``vocab_size``, ``eod``) and the trainer ``tokenize`` / ``detokenize``. It has no ``pad``: GPT
pretraining packs documents, so nothing is padded, and megatron-core 0.16's GPTDataset masks
labels equal to ``pad`` in place on its cached loss mask at the first sample it reads, which would
make the loss mask depend on where a run started (and break exact resume).
"""

from __future__ import annotations

from typing import Iterable

EOD_TOKEN = "<|endoftext|>"

__all__ = ["BPETokenizer", "train_bpe_tokenizer", "EOD_TOKEN"]


class BPETokenizer:
    """A saved ``tokenizers`` BPE model with an end-of-document token."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(path)
        except Exception as error:
            raise ValueError(f"--tokenizer-model {path}: not a tokenizers JSON file ({error})") from None
        eod = self._tokenizer.token_to_id(EOD_TOKEN)
        if eod is None:
            raise ValueError(f"--tokenizer-model {path}: has no {EOD_TOKEN} token")
        self.path, self.eod = path, eod
        # megatron-core's datasets put this in the cache key of the sample index
        self.unique_identifiers = {"class": type(self).__name__, "tokenizer_path": [path]}

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def detokenize(self, ids: list[int]) -> str:
        return self._tokenizer.decode(ids)


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, path: str) -> BPETokenizer:
    """Train a byte-level BPE on ``texts`` and save it to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOD_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.save(path)
    return BPETokenizer(path)
