"""A job in its own process, seeing only its GPUs.

CUDA reads CUDA_VISIBLE_DEVICES once, when a process first uses it, so a worker that serves
several GPUs cannot hand each job its own in-process. It spawns one fresh process per job with
CUDA_VISIBLE_DEVICES set to the job's devices (empty for a job that holds none: it trains on
the CPU), so the trainer's cuda:0..g-1 (and its ranks') are the job's devices and no other's.
The worker keeps the claim, the heartbeat and the outcome; the job process trains with the
same lease owner, so its writes are fenced like the worker's own. They share the step and the
stop flags (`RunState.shared`); the job process reports how it ended through a pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
from sqlalchemy import Engine

from app.models import JobStatus
from app.store import ArtifactStore
from trainer.processes import follow_parent
from worker.attempt import Outcome, RunState, attempt

log = logging.getLogger("ganforge.worker")


def run_in_child(
    job_id: str,
    *,
    owner: str,
    lease: timedelta,
    engine: Engine,
    store: ArtifactStore,
    state: RunState,
    devices: Sequence[str],
    simulate: bool,
    shutting_down: threading.Event,
) -> Outcome:
    """Train a claimed job in a spawned process on `devices`: how it ended."""
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_job_main,
        name=f"job-{job_id[:8]}",
        args=(
            job_id,
            owner,
            lease.total_seconds(),
            engine.url.render_as_string(hide_password=False),
            str(store.root),
            simulate,
            torch.get_num_threads(),
            state,
            send,
        ),
    )
    # Device numbers as nvidia-smi shows them (CUDA's default order is fastest first).
    order = os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    with _environment(CUDA_VISIBLE_DEVICES=",".join(devices), CUDA_DEVICE_ORDER=order):
        process.start()
    send.close()
    while process.is_alive():
        if shutting_down.is_set():
            state.stop.set()  # the job checkpoints and returns; the worker requeues it
        process.join(0.1)
    outcome: Outcome | None = None
    with contextlib.suppress(EOFError, OSError):
        if receive.poll():
            outcome = receive.recv()
    receive.close()
    if outcome is None:
        code = process.exitcode
        error = f"the job's process ended without a result (exit status {code})"
        return Outcome(JobStatus.FAILED, error)
    return outcome


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Set environment variables for a child about to be started, then restore them."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _job_main(
    job_id: str,
    owner: str,
    lease_seconds: float,
    database_url: str,
    store_root: str,
    simulate: bool,
    threads: int,
    state: RunState,
    send: Connection,
) -> None:
    """The job process: train, then send the `Outcome` to the worker."""
    from app.db import make_engine

    # The worker decides when to stop (SIGTERM, Ctrl-C, cancel) and tells this process
    # through `state.stop`; if the worker dies, this process goes with it.
    follow_parent()
    logging.basicConfig(
        level=logging.INFO, format="[%(asctime)s: %(levelname)s/%(processName)s] %(message)s"
    )
    torch.set_num_threads(threads)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    log.info(
        "job %s: CUDA_VISIBLE_DEVICES=%s%s",
        job_id,
        visible or "(none)",
        " (simulated: training on the CPU)" if simulate and visible else "",
    )
    engine = make_engine(database_url)
    try:
        outcome = attempt(
            engine,
            ArtifactStore(store_root),
            job_id,
            owner,
            timedelta(seconds=lease_seconds),
            state,
            simulate=simulate,
        )
    finally:
        engine.dispose()
    send.send(outcome)
    send.close()
