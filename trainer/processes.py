"""Helpers for child processes: DDP ranks and a GPU worker's per-job processes."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import multiprocessing.context
import signal
import sys


def follow_parent() -> None:
    """For a child whose parent decides when it stops: ignore SIGINT and SIGTERM (a Ctrl-C
    reaches the whole process group; the parent passes the stop on), and on Linux get
    SIGKILL when the parent exits (prctl PR_SET_PDEATHSIG), so no child outlives it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)


def forkserver_context(*preload: str) -> multiprocessing.context.ForkServerContext:
    """A forkserver context whose server imports `preload` once (torch, the trainer...):
    each child then starts in a fraction of a second instead of importing them anew. The
    server is a fresh interpreter that never touches CUDA, so its children may still choose
    their devices (CUDA_VISIBLE_DEVICES) before they first use CUDA; it ignores SIGTERM
    (trainer.forkserver_init) and exits when this process does. The preload list is global to
    the process; the first caller's takes effect when the server starts."""
    multiprocessing.set_forkserver_preload(["trainer.forkserver_init", *preload])
    return multiprocessing.get_context("forkserver")
