"""The training tests' shared fixture: a small preprocessed corpus and its tokenizer."""

import random

import pytest

WORDS = "the of and to in that he shall unto for his a lord they be is him not them with it all thou was god which".split()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    text = "\n\n".join(" ".join(rng.choice(WORDS[: 12 if d % 2 else None]) for _ in range(rng.randint(40, 100))) + "." for d in range(300))
    (root / "corpus.txt").write_text(text)
    from megatron_fp4.tools import preprocess_data as preprocess

    prefix = preprocess.main(["--input", str(root / "corpus.txt"), "--output-prefix", str(root / "corpus"), "--train-tokenizer", "--vocab-size", "400"])
    return prefix, str(root / "tokenizer.json")


