"""CPU: the quickstart's model and real text, FP4 paper with delayed output-gradient scaling,
margin 0 and 1 (and current scaling for the loss), 200 iterations: the fallback rate."""
import os, shlex, sys
from megatron_fp4 import pretrain_gpt
from megatron_fp4.tools import preprocess_data
from megatron_fp4.tools.quickstart import MODEL, TRAINING, write_corpus, _free_port
out = "/tmp/qs_delayed"
corpus = os.path.join(out, "corpus.jsonl")
write_corpus(corpus)
prefix = preprocess_data.main(["--input", corpus, "--json-keys", "text", "--output-prefix", os.path.join(out, "data", "topics"), "--train-tokenizer", "--vocab-size", "2048", "--force"])
tokenizer = os.path.join(out, "data", "tokenizer.json")
flags = {"current": "", "delayed m0": "--fp4-grad-amax delayed --fp4-grad-amax-margin 0", "delayed m1": "--fp4-grad-amax delayed"}[sys.argv[1]] + " " + " ".join(sys.argv[2:])
os.environ["MASTER_PORT"] = _free_port()
command = (f"{MODEL} {TRAINING} --train-iters 200 --lr-warmup-iters 10 --log-interval 20 --eval-interval 100 --eval-iters 4 "
           f"--data-path {prefix} --tokenizer-model {tokenizer} --fp4 --fp4-recipe paper {flags}")
pretrain_gpt.main(shlex.split(command))
