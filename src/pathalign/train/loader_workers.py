"""Data-loading workers end when the training process dies, however it dies.

PyTorch's workers poll their parent only while waiting for work (every 5 s), and a worker whose
result queue is full when the parent is killed (``kill -9``, the OOM killer) blocks for ever at
exit: its queue's feeder thread waits on a pipe that its sibling keeps open and nobody reads.
Such orphans (parent 1) keep their feature caches (hundreds of MB each).

:func:`worker_init` (the loaders' ``worker_init_fn``) makes the kernel end the worker:

* on Linux, ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` (through ctypes): the worker is killed as soon as
  its parent exits; a parent already gone before the call is caught by comparing ``getppid()``;
* elsewhere (or if prctl fails), a daemon thread compares ``getppid()`` with the parent's pid every
  0.5 s and ends the process with ``os._exit`` when they differ.

SIGKILL and ``os._exit``, not a gentler signal: a worker stuck on a lock runs no handler, and it
holds nothing worth saving (batches are a pure function of the step; checkpoints are written by
the parent).
"""
from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_SECONDS = 0.5


def _set_parent_death_signal(sig: int) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent exits (Linux); whether it worked."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval: float = WATCH_SECONDS) -> None:
    while os.getppid() == parent_pid:
        time.sleep(interval)
    os._exit(1)


def end_with_parent(worker_id: int, parent_pid: int) -> None:
    """Make this process (a loader worker) end when ``parent_pid`` dies (see the module docstring).

    Args:
        worker_id: the DataLoader's worker index (unused; the ``worker_init_fn`` signature).
        parent_pid: the training process's pid, taken when the loader was made.
    """
    if _set_parent_death_signal(signal.SIGKILL):
        if os.getppid() != parent_pid:  # the parent died before the call
            os._exit(1)
        return
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True, name="parent-watchdog").start()


def worker_init() -> Callable[[int], None]:
    """The ``worker_init_fn`` for a DataLoader made in this process (picklable, for spawned workers too)."""
    return functools.partial(end_with_parent, parent_pid=os.getpid())
