"""The Celery app of the workers and its one task, `run_job(job_id)`.

Start with `ganforge worker` (or `celery -A worker.celery_app worker --pool solo`). Each
worker process runs one job at a time in its own main thread (`solo` pool, prefetch 1).
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import timedelta
from functools import lru_cache
from typing import Any

from celery.signals import worker_ready, worker_shutting_down
from sqlalchemy import Engine

from app.db import first_line, is_transient, make_engine
from app.queue import RUN_JOB, make_celery
from app.reconcile import reconcile
from app.settings import get_settings
from app.store import ArtifactStore
from worker.runner import run_job as run_job_now

log = logging.getLogger("ganforge.worker")

celery = make_celery(get_settings())

# Set when the worker is asked to stop: the running job checkpoints and goes back to the queue.
shutting_down = threading.Event()


@worker_shutting_down.connect  # type: ignore[untyped-decorator]
def _on_shutdown(**_kwargs: Any) -> None:
    shutting_down.set()


def _reconcile_forever() -> None:
    engine, _ = _resources()
    settings = get_settings()
    # Spread the passes of several workers out.
    period = settings.reconcile_every_seconds
    while not shutting_down.wait(period * random.uniform(0.8, 1.2)):
        try:
            reconcile(engine, settings)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again
            if is_transient(exc):
                log.warning("reconcile pass skipped: database unreachable: %s", first_line(exc))
            else:
                log.exception("reconcile pass failed")


@worker_ready.connect  # type: ignore[untyped-decorator]
def _start_reconciler(**_kwargs: Any) -> None:
    threading.Thread(target=_reconcile_forever, name="reconciler", daemon=True).start()


@lru_cache(maxsize=1)
def _resources() -> tuple[Engine, ArtifactStore]:
    settings = get_settings()
    return make_engine(settings.database_url), ArtifactStore(settings.artifact_dir)


@celery.task(name=RUN_JOB)  # type: ignore[untyped-decorator]
def run_job(job_id: str) -> str:
    engine, store = _resources()
    if shutting_down.is_set():
        # This worker is on its way out: leave the job untouched for another worker.
        _send_again(engine, job_id)
        return "deferred"
    lease = timedelta(seconds=get_settings().lease_seconds)
    status = run_job_now(
        job_id, engine=engine, store=store, shutting_down=shutting_down, lease=lease
    )
    if status == "requeued":
        # Back on the queue for another worker (or this one, restarted) to continue from the
        # checkpoint just written.
        _send_again(engine, job_id)
    return status


def _send_again(engine: Engine, job_id: str) -> None:
    from sqlalchemy.orm import Session

    from app.models import Job
    from app.queue import enqueue

    with Session(engine) as session:
        job = session.get(Job, job_id)
        device = str(job.spec.get("device", "auto")) if job is not None else "auto"
    enqueue(get_settings(), job_id, device)
