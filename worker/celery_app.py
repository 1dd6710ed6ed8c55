"""The Celery app of the workers and its one task, `run_job(job_id)`.

Start with `ganforge worker` (or `celery -A worker.celery_app worker --pool threads
--concurrency 1`). Each worker process runs one job at a time in a pool of one thread
(prefetch 1), so its main thread stays free to answer `celery inspect` and Flower;
`ganforge worker --gpus` gives it devices (`configure`), which it registers while it runs.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
from datetime import timedelta
from functools import lru_cache
from typing import Any

from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from sqlalchemy import Engine, select, update

from app import jobs
from app.db import is_transient, make_engine
from app.logs import log_format, take_over
from app.models import Job, utcnow
from app.queue import RUN_JOB, make_celery, queue_name, send
from app.reconcile import reconcile
from app.settings import get_settings
from app.store import ArtifactStore
from app.stores import make_store
from app.sweep_controller import run_controller_pass
from trainer.errors import first_line
from worker.attempt import Stopped
from worker.claim import Missed
from worker.node import Node, Presence
from worker.runner import RunResult
from worker.runner import run_job as run_job_now

log = logging.getLogger("ganforge.worker")

celery = make_celery(get_settings())

# Set when the worker is asked to stop: the running job checkpoints and goes back to the queue.
shutting_down = threading.Event()
# This process and its GPUs (`ganforge worker` sets it; none for a plain Celery worker).
_node: Node | None = None
_presence: Presence | None = None


def configure(node: Node) -> None:
    """Give this worker process its devices (before the worker starts)."""
    global _node
    _node = node


def node() -> Node:
    if _node is None:
        configure(Node.here(get_settings(), ()))
    assert _node is not None
    return _node


@after_setup_logger.connect  # type: ignore[untyped-decorator]
@after_setup_task_logger.connect  # type: ignore[untyped-decorator]
def _our_log_format(logger: logging.Logger, loglevel: int, **_kwargs: Any) -> None:
    take_over(logger, loglevel)  # GANFORGE_LOG_FORMAT=json: Celery's lines as JSON too


@celeryd_init.connect  # type: ignore[untyped-decorator]
def _no_banner_in_json(instance: Any, **_kwargs: Any) -> None:
    if log_format() == "json":
        instance.quiet = True  # Celery prints its banner straight to stdout, not a log line


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_kwargs: Any) -> None:
    shutting_down.set()


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _unregister(**_kwargs: Any) -> None:
    shutting_down.set()
    if _presence is not None:
        _presence.join(timeout=5)  # it unregisters the devices on its way out


def _reconcile_forever() -> None:
    engine, store = _resources()
    settings = get_settings()
    # Spread the passes of several workers out.
    period = settings.reconcile_every_seconds
    while not shutting_down.wait(period * random.uniform(0.8, 1.2)):
        try:
            reconcile(engine, settings, store)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            if is_transient(exc):
                log.warning("reconcile pass skipped: database unreachable: %s", first_line(exc))
            else:
                log.exception("reconcile pass failed")
        _control_sweeps(engine)


def _control_sweeps(engine: Engine, sweep_ids: list[str] | None = None) -> None:
    """A sweep controller pass (app.sweep_controller): beside each reconcile pass, and at
    once for a trial's sweep when the trial ends here (its next trial need not wait)."""
    owner = f"{socket.gethostname()}:{os.getpid()}:{threading.current_thread().name}"
    try:
        run_controller_pass(engine, get_settings(), owner, sweep_ids=sweep_ids)
    except Exception as exc:  # noqa: BLE001 - the next pass tries again
        if is_transient(exc):
            log.warning("sweep pass skipped: database unreachable: %s", first_line(exc))
        else:
            log.exception("sweep pass failed")


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_reconciler(**_kwargs: Any) -> None:
    global _presence
    threading.Thread(target=_reconcile_forever, name="reconciler", daemon=True).start()
    if node().devices:
        engine, _ = _resources()
        lease = timedelta(seconds=get_settings().lease_seconds)
        _presence = Presence(engine, node(), lease, shutting_down)
        _presence.start()


@lru_cache(maxsize=1)
def _resources() -> tuple[Engine, ArtifactStore]:
    settings = get_settings()
    return make_engine(settings.database_url), make_store(settings)


@celery.task(name=RUN_JOB)  # type: ignore[untyped-decorator]
def run_job(job_id: str) -> RunResult:
    engine, store = _resources()
    if shutting_down.is_set():
        # This worker is on its way out: leave the queue untouched for another worker.
        _send_again(engine, job_id)
        return Missed.DEFERRED
    lease = timedelta(seconds=get_settings().lease_seconds)
    ran: list[str] = []  # the job the message woke this worker for (worker.claim picks it)
    status = run_job_now(
        job_id,
        engine=engine,
        store=store,
        shutting_down=shutting_down,
        lease=lease,
        node=node(),
        claimed=ran.append,
    )
    if status in (Stopped.REQUEUED, Missed.BUSY):
        # Back on the queue for another worker (or this one, restarted or with its GPUs free
        # again) to continue from the checkpoint just written, or to start.
        _send_again(engine, ran[0] if ran else job_id)
    elif ran and not shutting_down.is_set():
        with engine.connect() as conn:
            sweep_id = conn.scalar(select(Job.sweep_id).where(Job.id == ran[0]))
        if sweep_id is not None:
            _control_sweeps(engine, [sweep_id])
    return status


def _send_again(engine: Engine, job_id: str) -> None:
    """Put a message back on the queue of job `job_id` while a job of that queue is queued
    (a message only wakes a worker: it need not carry the job it leaves queued). It carries
    the queue's first job, marked sent now so the reconciler does not count it missing."""
    with engine.begin() as conn:
        gpus = conn.scalar(select(Job.gpus).where(Job.id == job_id))
        if gpus is None:
            return  # deleted meanwhile
        first = next(iter(jobs.next_queued(conn, [gpus], limit=1)), None)
        if first is None:
            return  # nothing of its queue is queued any more
        conn.execute(update(Job).where(Job.id == first).values(queued_at=utcnow()))
        settings = get_settings()
        name = queue_name(settings, gpus)
    send(settings, first, name)
