"""Quickstart: train a tiny LLaMA-style model twice, without and with FP4 `paper`, on real English text.

    python -m megatron_fp4.tools.quickstart [--train-iters 200] [--out outputs/quickstart]

The corpus is the Python Language Reference topics that ship with Python itself
(``pydoc_data.topics``: ~465k characters of English prose and grammar; PSF License), so nothing
is downloaded. Steps: write the corpus as JSONL, train an offline BPE and build the indexed
dataset (tools/preprocess_data.py), run ``megatron_fp4.pretrain_gpt`` once per precision
(same seed, same data order; the GPU when there is one), print both loss curves side by side
and write ``loss_curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket

MODEL = (
    "--num-layers 4 --hidden-size 128 --num-attention-heads 4 --group-query-attention --num-query-groups 2 "
    "--ffn-hidden-size 352 --seq-length 128 --swiglu --normalization RMSNorm --position-embedding-type rope "
    "--untie-embeddings-and-output-weights --disable-bias-linear --hidden-dropout 0 --attention-dropout 0"
)
TRAINING = "--micro-batch-size 8 --global-batch-size 16 --lr 2e-3 --min-lr 2e-4 --lr-decay-style cosine --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0 --split 95,5,0 --seed 1234"
def runs() -> dict[str, str]:
    """The two runs: BF16 on a GPU; on CPU the baseline keeps fp32 (CPU bf16 GEMMs are slow)."""
    import torch

    precision = "--bf16" if torch.cuda.is_available() else ""
    baseline = "bf16" if precision else "fp32"
    return {f"{baseline} (no FP4)": precision, "fp4 paper": f"{precision} --fp4 --fp4-recipe paper"}


def write_corpus(path: str) -> int:
    from pydoc_data.topics import topics

    with open(path, "w", encoding="utf-8") as f:
        for name in sorted(topics):
            f.write(json.dumps({"title": name, "text": topics[name]}) + "\n")
    return len(topics)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def plot(curves: dict[str, list[dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2))
    for name, records in curves.items():
        axis.plot([r["iteration"] for r in records], [r["lm loss"] for r in records], label=f"{name} (train)")
        valid = [(r["iteration"], r["validation loss"]) for r in records if "validation loss" in r]
        if valid:
            axis.plot(*zip(*valid), "o--", label=f"{name} (validation)")
    axis.set_xlabel("iteration")
    axis.set_ylabel("lm loss")
    axis.set_title("Tiny LLaMA on Python reference text: " + " vs ".join(curves))
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/quickstart")
    parser.add_argument("--train-iters", type=int, default=200)
    parser.add_argument("--eval-interval", type=int, default=50)
    parser.add_argument("--vocab-size", type=int, default=2048)
    args = parser.parse_args(argv)

    from .. import pretrain_gpt
    from . import preprocess_data

    os.makedirs(args.out, exist_ok=True)
    corpus = os.path.join(args.out, "corpus.jsonl")
    print(f"corpus: {write_corpus(corpus)} documents from pydoc_data.topics (PSF License) -> {corpus}")
    prefix = preprocess_data.main(
        ["--input", corpus, "--json-keys", "text", "--output-prefix", os.path.join(args.out, "data", "topics"),
         "--train-tokenizer", "--vocab-size", str(args.vocab_size), "--force"]  # the quickstart's own data, remade each run
    )
    tokenizer = os.path.join(args.out, "data", "tokenizer.json")
    curves = {}
    for name, flags in runs().items():
        print(f"\n=== training: {name} ===", flush=True)
        os.environ["MASTER_PORT"] = _free_port()
        command = (
            f"{MODEL} {TRAINING} --train-iters {args.train_iters} --lr-warmup-iters {max(1, args.train_iters // 20)} "
            f"--log-interval {max(1, args.train_iters // 10)} --eval-interval {args.eval_interval} --eval-iters 4 "
            f"--data-path {prefix} --tokenizer-model {tokenizer} {flags}"
        )
        curves[name] = pretrain_gpt.main(shlex.split(command))

    names = list(curves)
    width = max(len(n) for n in names) + 2
    print("\n" + f"{'iteration':>9} " + "".join(f"{n:>{width}}" for n in names) + "   (lm loss)")
    step = max(1, args.train_iters // 20)
    for index in range(step - 1, args.train_iters, step):
        print(f"{index + 1:>9} " + "".join(f"{curves[n][index]['lm loss']:>{width}.4f}" for n in names))
    final = {n: curves[n][-1].get("validation loss") for n in names}
    print("final validation loss: " + ", ".join(f"{n} {v:.4f}" for n, v in final.items() if v is not None))
    if all(v is not None for v in final.values()):
        gap = (final[names[1]] - final[names[0]]) / final[names[0]]
        print(f"FP4 `paper` vs {names[0]}: relative validation-loss gap {gap:+.2%}")
    png = os.path.join(args.out, "loss_curves.png")
    plot(curves, png)
    print(f"loss curves: {png}")
    return curves


if __name__ == "__main__":
    main()
