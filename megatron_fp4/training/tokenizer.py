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

__all__ = ["BPETokenizer", "NullTokenizer", "TokenizerError", "build_tokenizer", "train_bpe_tokenizer", "write_hf_tokenizer_config", "EOD_TOKEN"]


class TokenizerError(ValueError):
    """A --tokenizer-model that cannot be used; the message names the file."""


class BPETokenizer:
    """A saved ``tokenizers`` BPE model with an end-of-document token."""

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        try:
            self._tokenizer = Tokenizer.from_file(path)
        except Exception as error:
            raise TokenizerError(f"--tokenizer-model {path}: not a tokenizers JSON file ({error})") from None
        eod = self._tokenizer.token_to_id(EOD_TOKEN)
        if eod is None:
            raise TokenizerError(f"--tokenizer-model {path}: has no {EOD_TOKEN} token")
        self.path, self.eod = path, eod
        # megatron-core's datasets put this in the cache key of the sample index
        self.unique_identifiers = {"class": type(self).__name__, "tokenizer_path": [path]}

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size()

    def tokenize(self, text: str) -> list[int]:
        return self._tokenizer.encode(text).ids

    def tokenize_batch(self, texts: list[str]) -> list[list[int]]:
        """``tokenize`` of each text, the texts spread over all cores by the tokenizers library
        (the same ids as one ``tokenize`` per text)."""
        return [encoding.ids for encoding in self._tokenizer.encode_batch(texts)]

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


class NullTokenizer:
    """Upstream's ``--tokenizer-type NullTokenizer``: token ids are their own text, ``--vocab-size``
    ids plus one end-of-document id after them. For ``--mock-data`` runs and benchmarks."""

    def __init__(self, vocab_size: int) -> None:
        self.eod, self.path = vocab_size, None
        self.unique_identifiers = {"class": type(self).__name__, "vocab_size": vocab_size}

    @property
    def vocab_size(self) -> int:
        return self.eod + 1

    def tokenize(self, text: str) -> list[int]:
        return [int(token) for token in text.split()]

    def detokenize(self, ids: list[int]) -> str:
        return " ".join(str(i) for i in ids)


def build_tokenizer(args):
    """The tokenizer ``--tokenizer-type`` names."""
    if args.tokenizer_type == "NullTokenizer":
        return NullTokenizer(args.vocab_size)
    return BPETokenizer(args.tokenizer_model)


def write_hf_tokenizer_config(directory: str, tokenizer: BPETokenizer) -> None:
    """``tokenizer_config.json`` beside a ``tokenizer.json``: the directory then loads with
    transformers' ``AutoTokenizer`` (Megatron-LM's ``--tokenizer-type HuggingFaceTokenizer``)."""
    import json
    import os

    eod = tokenizer._tokenizer.id_to_token(tokenizer.eod)
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": eod, "eos_token": eod, "model_max_length": 1 << 30}, f, indent=1)
