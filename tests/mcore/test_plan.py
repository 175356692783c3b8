"""The dry run (`python -m megatron_fp4.plan`): closed-form parameter counts against real models,
the paper configs at their documented GPU counts, and layouts that must fail naming the flag."""

import os
import shlex
import subprocess

import pytest

from megatron_fp4 import plan

from . import dist_harness, plan_jobs

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = {name: os.path.join(REPO, "examples", "configs", f"llama2_{name}.sh") for name in ("1.3b", "7b", "13b")}
# exact LLaMA-2 sizes (the published 7B/13B checkpoints); 1.3B is the paper's LLaMA-2-style size
PAPER_SIZES = {"1.3b": 1.3e9, "7b": 6_738_415_616, "13b": 13_015_864_320}
SMALL = "--num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --micro-batch-size 1 --train-iters 2 --lr 1e-3"


@pytest.mark.parametrize(
    "extra",
    [
        "--ffn-hidden-size 176 --swiglu --normalization RMSNorm --position-embedding-type rope --untie-embeddings-and-output-weights --disable-bias-linear",
        "--ffn-hidden-size 128",  # GPT-style: biases, learned positions, tied embeddings, LayerNorm
        "--ffn-hidden-size 176 --swiglu --group-query-attention --num-query-groups 2 --position-embedding-type rope --disable-bias-linear",
    ],
)
def test_closed_form_counts_equal_a_real_model(extra, tmp_path):
    flags = shlex.split(f"{SMALL} {extra}")
    built = dist_harness.run(plan_jobs.count_parameters_job, flags, outdir=str(tmp_path))[0]
    shape = plan.ModelShape.from_args(plan.parse_args(flags), 1024)  # the trainer pads 1000 to 1024
    counted = plan.parameter_count(shape)
    layer_norm_biases = 0 if "RMSNorm" in extra else 5 * 64  # the closed form counts norm weights only
    assert counted + layer_norm_biases == built, (counted, built)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_paper_configs_pass_at_their_documented_gpu_counts(name, capsys):
    counts = subprocess.run(["bash", "-c", f'source "{CONFIGS[name]}"; echo $GPU_COUNTS'], capture_output=True, text=True, check=True)
    gpu_counts = [int(n) for n in counts.stdout.split()]
    assert gpu_counts
    for gpus in gpu_counts:
        result = plan.main(["--config", CONFIGS[name], "--gpus", str(gpus), "--achieved-tflops", "400"])
        assert abs(result["parameters"] / PAPER_SIZES[name] - 1) < 0.04 if name == "1.3b" else abs(result["parameters"] / PAPER_SIZES[name] - 1) < 1e-6
        assert result["totals"]["FP4 packed"] < result["totals"]["bf16"] < 80 * 1024**3
        assert result["tokens_per_second"] > 0
    assert "expected:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, message",
    [
        ("--gpus 15", "--gpus 15 is not a multiple of --tensor-model-parallel-size 2"),
        ("--gpus 18 --tensor-model-parallel-size 3", "--tensor-model-parallel-size 3 does not divide --num-attention-heads 32"),
        ("--gpus 18 --pipeline-model-parallel-size 3", "--pipeline-model-parallel-size 3 does not divide --num-layers 32"),
        ("--gpus 16 --global-batch-size 100", "--global-batch-size 100 is not a multiple"),
        ("--gpus 16 --micro-batch-size 64 --gpu-memory-gib 80", "more than --gpu-memory-gib 80"),
    ],
)
def test_impossible_layouts_fail_naming_the_flag(extra, message, capsys):
    with pytest.raises((SystemExit, ValueError)) as raised:
        plan.main(["--config", CONFIGS["7b"], *shlex.split(extra)])
    assert message in str(raised.value) + capsys.readouterr().err  # flag errors go to stderr (argparse)


def test_per_gpu_count_equals_a_tensor_parallel_rank(tmp_path):
    flags = shlex.split(
        f"{SMALL} --ffn-hidden-size 176 --swiglu --normalization RMSNorm --position-embedding-type rope "
        "--untie-embeddings-and-output-weights --disable-bias-linear --tensor-model-parallel-size 2 --sequence-parallel"
    )
    per_rank = dist_harness.run(plan_jobs.count_parameters_job, flags, tp=2, outdir=str(tmp_path))
    shape = plan.ModelShape.from_args(plan.parse_args(flags), 1024)
    estimate = plan.memory_per_gpu(shape, tp=2, pp=1, dp=1, micro_batch=1, sp=True, distributed_optimizer=False)
    assert per_rank[0] == per_rank[1] == estimate["parameters on this GPU"]


def test_fp4_saved_bytes_follow_the_recipe():
    """The FP4 activation estimate uses what the recipe keeps (bench_linear measured 1.50 B per
    element with FP8 OCC, 0.66 B with exact OCC at alpha 0.99), not one constant."""
    from megatron_fp4.occ import OCCConfig
    from megatron_fp4.recipe import FP4Recipe

    assert plan.saved_bytes_per_element(FP4Recipe.paper()) == pytest.approx(1.0)  # inline OCC: the E4M3 operand
    assert plan.saved_bytes_per_element(FP4Recipe.paper(occ=OCCConfig(compensation="fp8"))) == pytest.approx(1.5)
    assert plan.saved_bytes_per_element(FP4Recipe.paper(occ=OCCConfig(compensation="exact"))) == pytest.approx(0.66)
    assert plan.saved_bytes_per_element(FP4Recipe.paper(occ=OCCConfig(enabled=False))) == pytest.approx(0.5)
    assert plan.saved_bytes_per_element(FP4Recipe.nvfp4()) == pytest.approx(0.5 + 1 / 16)
    assert plan.saved_bytes_per_element(FP4Recipe.bf16()) == 2.0
    exact = plan.main(["--config", CONFIGS["7b"], "--gpus", "64", "--fp4-occ-compensation", "exact"])["totals"]["FP4 packed"]
    fp8 = plan.main(["--config", CONFIGS["7b"], "--gpus", "64", "--fp4-occ-compensation", "fp8"])["totals"]["FP4 packed"]
    inline = plan.main(["--config", CONFIGS["7b"], "--gpus", "64"])["totals"]["FP4 packed"]
    assert fp8 > inline > exact
