"""A job in its own process, seeing only its GPUs.

CUDA reads CUDA_VISIBLE_DEVICES once, when a process first uses it, so a worker that serves
several GPUs cannot hand each job its own in-process. It starts one process per job that sets
CUDA_VISIBLE_DEVICES to the job's devices (empty for a job that holds none: it trains on the
CPU) before anything touches CUDA, so the trainer's cuda:0..g-1 (and its ranks') are the job's
devices and no other's. Job processes fork from a forkserver that has imported this module
(torch, the trainer, the database layer) once and has never used CUDA: a job starts in a
fraction of a second instead of the seconds a fresh interpreter takes to import torch.
The worker keeps the claim, the heartbeat and the outcome; the job process trains with the
same lease owner, so its writes are fenced like the worker's own. They share the step and the
stop flags (`RunState.shared`); the job process reports how it ended through a pipe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.context
import os
import threading
from collections.abc import Sequence
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
from sqlalchemy import Engine

from app.logs import bind_job_id, setup_logging
from app.models import JobStatus
from app.store import ArtifactStore
from trainer.processes import follow_parent, forkserver_context
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
    ctx = job_context()
    receive, send = ctx.Pipe(duplex=False)
    # Device numbers as nvidia-smi shows them (CUDA's default order is fastest first).
    environment = {
        "CUDA_VISIBLE_DEVICES": ",".join(devices),
        "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID"),
    }
    process = ctx.Process(
        target=_job_main,
        name=f"job-{job_id[:8]}",
        args=(
            job_id,
            owner,
            lease.total_seconds(),
            engine.url.render_as_string(hide_password=False),
            store.url,
            simulate,
            torch.get_num_threads(),
            state,
            send,
            environment,
        ),
    )
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


def job_context() -> multiprocessing.context.ForkServerContext:
    """The multiprocessing context job processes (and their shared state) come from."""
    return forkserver_context(__name__)


def _job_main(
    job_id: str,
    owner: str,
    lease_seconds: float,
    database_url: str,
    store_url: str,
    simulate: bool,
    threads: int,
    state: RunState,
    send: Connection,
    environment: dict[str, str],
) -> None:
    """The job process: train, then send the `Outcome` to the worker."""
    from app.db import make_engine
    from app.settings import get_settings
    from app.stores import make_store

    # First, before anything can initialise CUDA: the job's devices.
    os.environ.update(environment)
    # The worker decides when to stop (SIGTERM, Ctrl-C, cancel) and tells this process
    # through `state.stop`; if the worker dies, this process goes with it.
    follow_parent()
    setup_logging()
    bind_job_id(job_id)  # this process handles this one job: every record carries its id
    torch.set_num_threads(threads)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    log.info(
        "job %s: CUDA_VISIBLE_DEVICES=%s%s",
        job_id,
        visible or "(none)",
        " (simulated: training on the CPU)" if simulate and visible else "",
    )
    engine = make_engine(database_url)
    store = make_store(get_settings(), store_url)
    try:
        outcome = attempt(
            engine,
            store,
            job_id,
            owner,
            timedelta(seconds=lease_seconds),
            state,
            simulate=simulate,
        )
    finally:
        store.close()
        engine.dispose()
    send.send(outcome)
    send.close()
