"""Helpers for child processes: DDP ranks and a GPU worker's per-job processes."""

from __future__ import annotations

import contextlib
import ctypes
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
