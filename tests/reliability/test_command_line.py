"""Bad flags fail before torch.distributed starts, once, naming the flag; the planner refuses
impossible numbers; the launcher keeps the caller's directory; the README's Python runs."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from megatron_fp4 import plan
from megatron_fp4.training.arguments import parse_args

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --micro-batch-size 1 --train-iters 10 --lr 1e-3"


@pytest.mark.parametrize(
    "extra, message",
    [
        ("--min-lr 1e-2", r"--min-lr 0.01 must be within 0..--lr 0.001"),
        ("--lr=-1e-3", r"--lr -0.001 must not be negative"),
        ("--tensor-model-parallel-size 3", r"--tensor-model-parallel-size 3 does not divide --num-attention-heads 4"),
        ("--pipeline-model-parallel-size 3", r"--pipeline-model-parallel-size 3 does not divide --num-layers 2"),
        ("--hidden-size 72 --num-attention-heads 4 --fp4-format e2m1 --fp4-recipe nvfp4", r"blocks of 16 do not divide the local GEMM reduction size 72"),
        ("--override-opt_param-scheduler --use-checkpoint-opt_param-scheduler", r"contradict each other"),
        ("--ckpt-step 3", r"--ckpt-step needs --load"),
    ],
)
def test_bad_flags_fail_before_distributed_start_naming_the_flag(extra, message, capsys):
    with pytest.raises(SystemExit) as raised:
        parse_args(shlex.split(f"{BASE} {extra}"))
    assert raised.value.code == 2
    assert re.search(message, capsys.readouterr().err)


def test_a_negative_learning_rate_with_a_space_is_a_value_not_a_flag(capsys):
    with pytest.raises(SystemExit):
        parse_args(shlex.split(BASE) + ["--lr", "-1e-3"])
    err = capsys.readouterr().err
    assert "must not be negative" in err and "expected one argument" not in err


def test_only_rank_zero_prints_a_flag_error(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "3")
    with pytest.raises(SystemExit):
        parse_args(shlex.split(f"{BASE} --min-lr 1"))
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("extra", ["--gpus 0", "--gpus 8 --achieved-tflops -100", "--gpus 8 --gpu-memory-gib 0"])
def test_plan_refuses_non_positive_numbers(extra, capsys):
    with pytest.raises(SystemExit):
        plan.main(shlex.split(f"{extra} {BASE}"))
    assert "must be positive" in capsys.readouterr().err


def test_launcher_keeps_the_callers_directory(corpus, tmp_path):
    """Relative --data-path and --save resolve where the user runs examples/pretrain_gpt.sh."""
    prefix, tokenizer = corpus
    os.symlink(prefix + ".bin", tmp_path / "data.bin")
    os.symlink(prefix + ".idx", tmp_path / "data.idx")
    flags = f"{BASE} --train-iters 3 --lr-warmup-iters 0 --data-path data --tokenizer-model {tokenizer} --save ck --eval-iters 0"
    environment = {**os.environ, "PYTHON": sys.executable, "MASTER_PORT": "29517"}
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "pretrain_gpt.sh"), *shlex.split(flags)], cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "ck" / "latest_checkpointed_iteration.txt").read_text() == "3"


def test_readme_python_runs():
    """Each Python block of the README, as a user would paste it, in a fresh interpreter."""
    text = open(os.path.join(REPO, "README.md")).read()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    for block in blocks:
        result = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, timeout=300, env={**os.environ, "MASTER_PORT": "29518"})
        assert result.returncode == 0, f"{block}\n{result.stderr[-3000:]}"
