"""examples/slurm/pretrain_gpt_fp4.sbatch under a simulated Slurm: stub srun/scontrol/torchrun
print what they are asked to run, so the per-node torchrun commands can be checked."""

import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SBATCH = os.path.join(REPO, "examples", "slurm", "pretrain_gpt_fp4.sbatch")

STUBS = {
    # srun: drop its own options, then run the task command once per node with SLURM_NODEID set
    "srun": r'''#!/bin/bash
echo "SRUN $*"
while [[ "$1" == --* ]]; do
  case "$1" in --container-image|--container-mounts|--container-workdir) shift 2 ;; *) shift ;; esac
done
for ((node = 0; node < ${SLURM_NNODES:-1}; node++)); do SLURM_NODEID=$node SLURM_PROCID=$node "$@"; done
''',
    "scontrol": r'''#!/bin/bash
if [ "$1 $2" = "show hostnames" ]; then for ((i = 1; i <= ${SLURM_NNODES:-1}; i++)); do printf "node%02d\n" $i; done
else echo "SCONTROL $*"; fi
''',
    "torchrun": '#!/bin/bash\necho "TORCHRUN $*"\n',
    "apptainer": '#!/bin/bash\necho "APPTAINER $*"\nwhile [ "$1" != bash ]; do shift; done\n"$@"\n',
}


@pytest.fixture
def slurm(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)

    def submit(nodes: int, **env) -> str:
        environment = {
            **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_NNODES": str(nodes),
            "SLURM_JOB_NODELIST": f"node[01-{nodes:02d}]", "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "fp4test",
            "SLURM_SUBMIT_DIR": REPO, "DATA_PATH": "/data/dclm_text_document", "TOKENIZER": "/data/tokenizer.json",
            "RUN_DIR": str(tmp_path / "run"), **env,
        }
        result = subprocess.run(["bash", SBATCH], env=environment, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return submit


@pytest.mark.parametrize("nodes", [1, 4])
def test_one_torchrun_per_node_with_the_right_ranks(slurm, nodes, tmp_path):
    out = slurm(nodes)
    launches = [line for line in out.splitlines() if line.startswith("TORCHRUN")]
    assert len(launches) == nodes
    ranks = sorted(int(re.search(r"--node-rank (\d+)", line).group(1)) for line in launches)
    assert ranks == list(range(nodes))
    for line in launches:
        assert f"--nnodes {nodes} --nproc-per-node 8" in line
        assert "--rdzv-endpoint node01:29500" in line and "--rdzv-id 77" in line
        assert "-m megatron_fp4.pretrain_gpt --num-layers 32 --hidden-size 4096" in line  # the 7B config
        assert "--fp4-format e2m1 --fp4-recipe paper" in line
        assert f"--save {tmp_path}/run/checkpoints --load {tmp_path}/run/checkpoints" in line
    # no checkpoint reached --train-iters: the job requeues itself to resume
    assert "SCONTROL requeue 77" in out
    assert os.path.exists(tmp_path / "run" / "logs" / "77.log")


def test_bf16_twin_and_pyxis_container(slurm):
    out = slurm(2, PRECISION="bf16", CONTAINER_IMAGE="/images/megatron-fp4.sqsh")
    srun = next(line for line in out.splitlines() if line.startswith("SRUN"))
    assert "--container-image /images/megatron-fp4.sqsh" in srun and "--container-mounts" in srun
    assert all("--fp4" not in line for line in out.splitlines() if line.startswith("TORCHRUN"))


def test_apptainer_container(slurm):
    out = slurm(1, CONTAINER_IMAGE="/images/megatron-fp4.sif", CONTAINER_RUNTIME="apptainer")
    assert "APPTAINER exec --nv --bind" in out and "/images/megatron-fp4.sif bash -c" in out
    assert sum(line.startswith("TORCHRUN") for line in out.splitlines()) == 1


def test_finished_run_does_not_requeue(slurm, tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("23842")
    assert "requeue" not in slurm(1)


def test_upstream_route_runs_patched_megatron_lm(slurm, tmp_path):
    """MEGATRON_LM_DIR: upstream's pretrain_gpt.py with the same flags plus its own (the
    tokenizer directory for its HuggingFaceTokenizer, the local transformer)."""
    out = slurm(1, MEGATRON_LM_DIR="/opt/megatron-lm")
    command = next(line for line in out.splitlines() if line.startswith("TORCHRUN"))
    assert "/opt/megatron-lm/pretrain_gpt.py" in command and "-m megatron_fp4.pretrain_gpt" not in command
    assert "--tokenizer-type HuggingFaceTokenizer" in command and "--tokenizer-model /data " in command
    assert "--fp4-format e2m1 --fp4-recipe paper" in command and "--load " in command
