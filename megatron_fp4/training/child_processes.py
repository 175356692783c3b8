"""Forked helper processes die with the trainer.

megatron-core writes checkpoints from processes forked off the trainer
(``FileSystemWriterAsync.write_preloaded_data_multiproc``). A forked child inherits every open
descriptor, the listening socket of the rendezvous store on ``MASTER_PORT`` included; after a
``kill -9`` of the trainer mid-save the orphaned writer kept the port, and the next run failed with
EADDRINUSE. Linux can deliver a signal to a child when its parent dies (``PR_SET_PDEATHSIG``);
every ``os.fork`` child of the trainer's main thread asks for SIGKILL. (The signal follows the
forking *thread*, so children forked from other threads are left alone: they would be killed
when that thread ends, not when the trainer does.)
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

__all__ = ["kill_forked_children_with_parent", "installed"]

_PR_SET_PDEATHSIG = 1
_installed = False
_forking = {"pid": None, "main_thread": False}  # set in the parent just before each fork


def _before_fork() -> None:
    _forking["pid"] = os.getpid()
    _forking["main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    if not _forking["main_thread"]:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != _forking["pid"]:  # the parent died before the request took effect
        os._exit(1)


def kill_forked_children_with_parent() -> None:
    """From now on, children forked by this process's main thread are killed when it dies (Linux)."""
    global _installed
    if _installed or not sys.platform.startswith("linux"):
        return
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _installed = True


def installed() -> bool:
    return _installed
