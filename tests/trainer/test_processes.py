"""The forkserver that job processes and DDP ranks fork from (trainer.processes)."""

from __future__ import annotations

import multiprocessing.forkserver
import os
import signal
import time

from trainer.processes import follow_parent, forkserver_context


def _child(ready) -> None:  # noqa: ANN001 - a multiprocessing Event
    follow_parent()
    ready.set()
    time.sleep(60)


def test_a_process_group_sigterm_neither_ends_the_server_nor_its_children():
    """systemd's stop and `kill -TERM -PGID` signal every process of the worker; the job
    processes must live on until the worker has checkpointed them (it tells them through
    their stop flag), so their forkserver, whose exit kills them, ignores SIGTERM."""
    ctx = forkserver_context()
    ready = ctx.Event()
    child = ctx.Process(target=_child, args=(ready,))
    child.start()
    try:
        assert ready.wait(30)
        server = multiprocessing.forkserver._forkserver._forkserver_pid
        assert server is not None and child.pid is not None
        os.kill(server, signal.SIGTERM)
        os.kill(child.pid, signal.SIGTERM)
        time.sleep(0.5)
        os.kill(server, 0)  # still there (raises ProcessLookupError if not)
        assert child.is_alive()
        # The server still serves: another child starts.
        again = ctx.Event()
        second = ctx.Process(target=_child, args=(again,))
        second.start()
        assert again.wait(30)
        second.kill()
        second.join(10)
    finally:
        child.kill()
        child.join(10)
