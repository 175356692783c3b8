"""Shared test settings: fresh random inputs every run (the seed is printed for reproduction)."""

import os
import random

import pytest
import torch


def pytest_report_header(config):
    return f"torch {torch.__version__}, seed {_SEED} (set MEGATRON_FP4_TEST_SEED to replay)"


_SEED = int(os.environ.get("MEGATRON_FP4_TEST_SEED", random.SystemRandom().randrange(2**31)))


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """Seed each test from the session seed and its name: fresh per run, replayable per test."""
    torch.manual_seed(_SEED ^ (hash(request.node.nodeid) & 0x7FFFFFFF))
    yield


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def without_stochastic_rounding(recipe):
    """The recipe with every operand rounded to nearest: for comparing two paths that cannot draw
    the same random numbers (CPU vs CUDA generators)."""
    import dataclasses

    from megatron_fp4.recipe import OPERANDS

    return recipe.replace(**{op: dataclasses.replace(getattr(recipe, op), stochastic_rounding=False) for op in OPERANDS})


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """‖actual − expected‖ / ‖expected‖ in fp64 (the error measure every numerics test states)."""
    expected = expected.double()
    return ((actual.double() - expected).norm() / expected.norm().clamp_min(1e-300)).item()


CORPUS_WORDS = "the of and to in that he shall unto for his a lord they be is him not them with it all thou was god which".split()


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A small preprocessed corpus and its tokenizer: (data prefix, tokenizer path)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    text = "\n\n".join(" ".join(rng.choice(CORPUS_WORDS[: 12 if d % 2 else None]) for _ in range(rng.randint(40, 100))) + "." for d in range(300))
    (root / "corpus.txt").write_text(text)
    from megatron_fp4.tools import preprocess_data as preprocess

    prefix = preprocess.main(["--input", str(root / "corpus.txt"), "--output-prefix", str(root / "corpus"), "--train-tokenizer", "--vocab-size", "400"])
    return prefix, str(root / "tokenizer.json")
