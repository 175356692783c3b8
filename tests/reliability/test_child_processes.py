"""megatron-core's forked checkpoint writers die with the trainer (kill -9 once left one holding
MASTER_PORT, and the next run failed with EADDRINUSE)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

TRAINER_STAND_IN = textwrap.dedent(
    """
    import multiprocessing, os, socket, sys, time
    from megatron_fp4.training.child_processes import kill_forked_children_with_parent
    if sys.argv[1] == "install":
        kill_forked_children_with_parent()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()  # stands for the rendezvous store on MASTER_PORT, inherited by the child
    writer = multiprocessing.get_context("fork").Process(target=time.sleep, args=(120,))
    writer.start()  # as megatron-core's FileSystemWriterAsync starts its writers
    print(writer.pid, listener.getsockname()[1], flush=True)
    time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def _kill_parent_and_watch_child(mode: str) -> bool:
    parent = subprocess.Popen([sys.executable, "-c", TRAINER_STAND_IN, mode], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline().split()[0])
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline and _alive(child_pid):
        time.sleep(0.05)
    survived = _alive(child_pid)
    if survived:
        os.kill(child_pid, signal.SIGKILL)
    return survived


def test_forked_writer_dies_with_the_trainer():
    assert not _kill_parent_and_watch_child("install")


def test_without_the_hook_the_writer_survives():
    """The control: the test can fail (the orphan outlives a killed parent without the hook)."""
    assert _kill_parent_and_watch_child("none")


def test_the_trainer_installs_the_hook(corpus):
    from megatron_fp4.training import child_processes

    from training.test_pretrain import run

    run(corpus, "--train-iters 3")
    assert child_processes.installed()
