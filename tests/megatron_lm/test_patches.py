"""patches/megatron-lm: the series applies to the pinned upstream (../shared/megatron-lm),
idempotently; bad trees are refused; upstream's own parser and model builder, patched, run our
recipes. (Upstream's training loop needs CUDA: initialize_megatron asserts it, so patched
training itself is exercised on the GPU, not here.)"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_fp4.megatron_lm import checkout

SHARED = checkout.ROOT.parent / "shared" / "megatron-lm"
pytestmark = pytest.mark.skipif(not (SHARED / "pretrain_gpt.py").is_file(), reason="needs ../shared/megatron-lm (Megatron-LM core_v0.16.1)")
JOBS = Path(__file__).with_name("upstream_jobs.py")
MODEL = (
    "--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --max-position-embeddings 32 "
    "--micro-batch-size 2 --global-batch-size 4 --train-iters 3 --lr 1e-3 --mock-data --tokenizer-type NullTokenizer "
    "--vocab-size 500 --transformer-impl local --bf16 --normalization RMSNorm --swiglu --disable-bias-linear "
    "--position-embedding-type rope --no-rope-fusion --no-gradient-accumulation-fusion --no-masked-softmax-fusion --no-bias-swiglu-fusion --no-persist-layer-norm"
).split()


@pytest.fixture(scope="module")
def patched(tmp_path_factory) -> Path:
    tree = tmp_path_factory.mktemp("upstream") / "megatron-lm"
    checkout.main(["--dir", str(tree), "--source", str(SHARED)])
    return tree


def run_job(tree: Path, job: str, *flags: str) -> dict:
    result = subprocess.run([sys.executable, str(JOBS), str(tree), job, *MODEL, *flags], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return json.loads(lines[-1])


def test_series_applies_cleanly_and_again_idempotently(patched, capsys):
    assert (patched / checkout.MARKER).read_text().split()[0] == "core_v0.16.1"
    checkout.main(["--dir", str(patched)])
    out = capsys.readouterr().out
    patches = sorted(p.name for p in checkout.patch_directory().glob("*.patch"))
    assert len(patches) >= 5 and all(f"already applied {name}" in out for name in patches)
    # the upstream snapshot itself is untouched
    assert "megatron_fp4" not in (SHARED / "pretrain_gpt.py").read_text()


def test_another_tag_or_a_modified_tree_is_refused(tmp_path):
    tree = tmp_path / "old"
    shutil.copytree(SHARED, tree)
    (tree / "UPSTREAM").write_text("core_v0.15.0 0000\n")
    with pytest.raises(SystemExit, match=r"Megatron-LM core_v0.15.0; megatron-fp4 has patch series for \['core_v0.16.1'\]"):
        checkout.main(["--dir", str(tree)])
    (tree / "UPSTREAM").write_text("core_v0.16.1\n")
    gpt = tree / "gpt_builders.py"
    gpt.write_text(gpt.read_text().replace("if args.spec is not None:", "if args.spec:"))
    with pytest.raises(SystemExit, match=r"0003-.*\.patch does not apply to .* and is not already applied"):
        checkout.main(["--dir", str(tree)])
    with pytest.raises(SystemExit, match=r"--tag core_v0.99: megatron-fp4 has patch series for"):
        checkout.main(["--dir", str(tree), "--tag", "core_v0.99"])


ACCEPTED = [
    ("--fp4-format e2m1 --fp4-recipe paper", {"recipe": "paper", "fp4": None, "bf16_layers": [], "dge_k": 5.0, "occ": True}),
    ("--fp4", {"recipe": "paper", "fp4": None}),
    ("--fp4-format e2m1 --fp4-recipe direct --first-last-layers-bf16", {"recipe": "direct", "bf16_layers": [1, 4], "occ": False}),
    ("--fp4 --num-layers-at-end-in-bf16 2 --first-last-layers-bf16 --fp4-dge-k 3 --no-fp4-occ", {"bf16_layers": [1, 3, 4], "dge_k": 3.0, "occ": False}),
    ("--fp4-format e2m1", {"recipe": "nvfp4", "fp4": None}),  # upstream's default recipe; ours without TE
    ("", {"recipe": None, "fp4": None}),
    ("--fp4 --cuda-graph-impl local --cuda-graph-scope full_iteration --no-check-for-nan-in-loss-and-grad", {"recipe": "paper", "fp4": None}),
]
REJECTED = [
    ("--fp4-format e2m1 --fp4-recipe paper --fp8-format hybrid", "--fp4-recipe paper and --fp8-format hybrid exclude each other"),
    ("--fp4-dge-k 3", "FP4 options were given without --fp4-format e2m1 (or --fp4): --fp4-dge-k"),
    ("--fp4 --fp4-param-gather --use-distributed-optimizer", "--fp4-param-gather is not supported with --fp4-recipe paper"),
    ("--fp4 --no-fp4-occ --fp4-occ-alpha 0.9", "--fp4-occ-alpha and --no-fp4-occ contradict each other"),
    ("--fp4 --cuda-graph-impl local --cuda-graph-scope full_iteration --no-check-for-nan-in-loss-and-grad --fp4-health-interval 5",
     "--fp4-health-interval 5 cannot run inside a CUDA graph"),
    ("--fp4 --cuda-graph-impl local --cuda-graph-scope full_iteration --no-check-for-nan-in-loss-and-grad --fp4-occ-compensation exact",
     "--fp4-occ-compensation exact sizes its outlier residual on the host"),
]


@pytest.fixture(scope="module")
def parsed(patched, tmp_path_factory) -> dict:
    """Every command line of ACCEPTED and REJECTED through upstream's parser in one subprocess
    (importing upstream once, not once per case: ~6 s each); flags -> what the job saw."""
    flag_sets = [flags for flags, _ in ACCEPTED + REJECTED]
    cases = tmp_path_factory.mktemp("parse") / "cases.json"
    cases.write_text(json.dumps([MODEL + flags.split() for flags in flag_sets]))
    result = subprocess.run([sys.executable, str(JOBS), str(patched), "parse-many", str(cases)], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert result.returncode == 0 and lines, result.stderr[-3000:]
    return dict(zip(flag_sets, json.loads(lines[-1])))


@pytest.mark.parametrize("flags, expected", ACCEPTED)
def test_patched_parser_accepts_our_recipes(parsed, flags, expected):
    seen = parsed[flags]
    assert "error" not in seen, seen
    assert {key: seen[key] for key in expected} == expected


@pytest.mark.parametrize("flags, message", REJECTED)
def test_patched_parser_rejects_bad_combinations_naming_the_flag(parsed, flags, message):
    seen = parsed[flags]
    assert message in seen.get("error", ""), seen


def test_one_process_parses_like_one_process_per_command_line(patched, parsed):
    """The batched parse (upstream imported once) sees what a fresh process sees: the state one
    command line leaves behind does not leak into the next (two cases, rerun alone)."""
    for flags in (ACCEPTED[2][0], REJECTED[3][0]):
        assert run_job(patched, "parse", *flags.split()) == parsed[flags]


def test_unknown_recipe_fails_naming_the_flag(patched):
    result = subprocess.run([sys.executable, str(JOBS), str(patched), "parse", *MODEL, "--fp4-format", "e2m1", "--fp4-recipe", "fp3"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--fp4-recipe: invalid choice: 'fp3'" in result.stderr


def test_model_from_patched_gpt_builders_carries_fp4_layers(patched):
    seen = run_job(patched, "build", "--fp4-format", "e2m1", "--fp4-recipe", "paper", "--first-last-layers-bf16")
    layers = seen["layers"]
    assert layers["decoder.layers.1.self_attention.linear_qkv"] == ["FP4ColumnParallelLinear", "paper", "decoder.layers.1.self_attention.linear_qkv"]
    assert layers["decoder.layers.2.mlp.linear_fc2"][:2] == ["FP4RowParallelLinear", "paper"]
    assert layers["decoder.layers.0.self_attention.linear_qkv"][1] == "bf16" and layers["decoder.layers.3.mlp.linear_fc2"][1] == "bf16"
    assert layers["decoder.layers.0.self_attention.core_attention"][0] == "SDPACoreAttention"  # --attention-backend auto without TE
    bf16_twin = run_job(patched, "build")
    assert bf16_twin["layers"]["decoder.layers.1.self_attention.linear_qkv"][0] == "ColumnParallelLinear"  # upstream's own spec


def test_resume_with_other_fp4_arithmetic_is_refused(patched, tmp_path):
    """The effective recipe travels in upstream's checkpoint args (plain values, weights_only
    loadable: the parse job round-trips them); a resume from --load whose arithmetic differs (here
    the OCC compensation, as when `paper`'s default changed between versions) is refused unless
    --override-fp4-recipe, and the same flags as the checkpoint's are accepted."""
    import argparse

    import torch

    saved = run_job(patched, "parse", "--fp4", "--fp4-occ-compensation", "exact")["record"]
    assert saved["recipe"]["name"] == "paper" and saved["recipe"]["occ"]["compensation"] == "exact"
    checkpoint = tmp_path / "ck"
    (checkpoint / "iter_0000010").mkdir(parents=True)
    (checkpoint / "latest_checkpointed_iteration.txt").write_text("10")
    torch.save({"args": argparse.Namespace(megatron_fp4_recipe_record=saved), "iteration": 10}, checkpoint / "iter_0000010" / "common.pt")
    refused = run_job(patched, "parse", "--fp4", "--load", str(checkpoint))
    assert "recipe.occ.compensation 'exact' (checkpoint) vs 'inline' (this run)" in refused.get("error", ""), refused
    assert "--override-fp4-recipe" in refused["error"]
    assert "error" not in run_job(patched, "parse", "--fp4", "--load", str(checkpoint), "--override-fp4-recipe")
    assert "error" not in run_job(patched, "parse", "--fp4", "--fp4-occ-compensation", "exact", "--load", str(checkpoint))
    to_bf16 = run_job(patched, "parse", "--load", str(checkpoint))
    assert "FP4 recipe 'paper' (checkpoint) vs BF16 (no FP4) (this run)" in to_bf16.get("error", ""), to_bf16
    assert "error" not in run_job(patched, "parse", "--load", str(checkpoint), "--finetune")  # weights only: a new run
