"""Run a function on N processes: gloo + megatron's CPU runtime without CUDA, NCCL on GPUs.

Each worker initialises torch.distributed and megatron-core's model parallel state, runs the job
and writes its result to ``outdir/rank{r}.pt``. Used by the Megatron integration tests on CPU and
on GPU machines alike.
"""

from __future__ import annotations

import os
import socket
import traceback

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _worker(rank, world_size, port, tp, pp, job, args, outdir):
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    try:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(
            "nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size
        )
        from megatron.core import parallel_state
        from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

        from megatron_fp4.megatron import enable_cpu_runtime

        enable_cpu_runtime()
        parallel_state.initialize_model_parallel(tp, pp)
        model_parallel_cuda_manual_seed(1234)
        torch.manual_seed(1234)
        result = job(*args)
        torch.save(result, os.path.join(outdir, f"rank{rank}.pt"))
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()
    except BaseException:
        with open(os.path.join(outdir, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise


def run(job, *args, tp: int = 1, pp: int = 1, dp: int = 1, outdir: str) -> list:
    """Run ``job(*args)`` on tp*pp*dp ranks; return each rank's result."""
    world_size = tp * pp * dp
    if torch.cuda.is_available() and torch.cuda.device_count() < world_size:
        import pytest

        pytest.skip(f"needs {world_size} GPUs, found {torch.cuda.device_count()}")
    os.makedirs(outdir, exist_ok=True)
    try:
        mp.spawn(_worker, args=(world_size, free_port(), tp, pp, job, args, outdir), nprocs=world_size, join=True)
    except Exception as error:
        errors = [open(os.path.join(outdir, f)).read() for f in sorted(os.listdir(outdir)) if f.endswith(".err")]
        raise RuntimeError("worker failed:\n" + "\n".join(errors)) from error
    return [torch.load(os.path.join(outdir, f"rank{r}.pt"), weights_only=False) for r in range(world_size)]
