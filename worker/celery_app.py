"""The Celery app of the workers and its one task, `run_job(job_id)`.

Start with `ganforge worker` (or `celery -A worker.celery_app worker --pool solo`). Each
worker process runs one job at a time in its own main thread (`solo` pool, prefetch 1).
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from typing import Any

from celery.signals import worker_shutting_down
from sqlalchemy import Engine

from app.db import make_engine
from app.queue import RUN_JOB, make_celery
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


@lru_cache(maxsize=1)
def _resources() -> tuple[Engine, ArtifactStore]:
    settings = get_settings()
    return make_engine(settings.database_url), ArtifactStore(settings.artifact_dir)


@celery.task(name=RUN_JOB)  # type: ignore[untyped-decorator]
def run_job(job_id: str) -> str:
    engine, store = _resources()
    status = run_job_now(job_id, engine=engine, store=store, shutting_down=shutting_down)
    if status == "requeued":
        # Back on the queue for another worker (or this one, restarted) to continue from the
        # checkpoint just written.
        from sqlalchemy.orm import Session

        from app.models import Job
        from app.queue import enqueue

        with Session(engine) as session:
            job = session.get(Job, job_id)
            device = str(job.spec.get("device", "auto")) if job is not None else "auto"
        enqueue(get_settings(), job_id, device)
    return status
