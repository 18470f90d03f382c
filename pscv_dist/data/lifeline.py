"""Pool workers that die with their parent.

Why: a ``pscv prepare`` killed with SIGKILL cannot clean up, and its spawned pool workers hold the
pool queue's pipe themselves, so they never see EOF: they keep converting (and writing into a
staging folder nobody will publish) until their queue runs dry, or wait forever. Linux delivers a
signal to a process when its parent dies if it asked with ``prctl(PR_SET_PDEATHSIG)``; elsewhere,
and for a parent that died before the prctl took effect, a daemon thread polls ``os.getppid()``.

This module imports nothing heavy on purpose: the worker unpickles (imports) its initializer
before anything else, so the time between the worker's start and the prctl stays a fraction of a
second instead of the seconds torch takes to import.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 1.0


def die_with_parent(parent_pid: int) -> None:
    """Make the calling process exit when ``parent_pid`` (its parent) is gone."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the prctl took effect
        os._exit(1)
    threading.Thread(target=_watch, args=(parent_pid,), name="pscv-parent-watch", daemon=True).start()


def _watch(parent_pid: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(1)


def worker_init(parent_pid: int) -> None:
    """``ProcessPoolExecutor`` initializer of the conversion workers."""
    die_with_parent(parent_pid)
    import torch

    torch.set_num_threads(1)  # one volume per process: parallelism comes from the workers
