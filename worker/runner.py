"""Runs one job: claim it, train it with the service's sinks, heartbeat, record the outcome.

`run_job` is what the Celery task calls; it needs nothing from Celery, so it can also be
driven directly (by a benchmark, say).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import torch
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app import jobs
from app.datasets import resolve_dataset_path
from app.db import first_line, is_transient, retry_transient
from app.models import Checkpoint as CheckpointRow
from app.models import Job
from app.store import ArtifactStore
from trainer.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from trainer.data import DataError
from trainer.distributed import ranks
from trainer.spec import TrainSpec
from trainer.training import Trainer, TrainingDiverged
from worker.sinks import service_sinks

log = logging.getLogger("ganforge.worker")

HEARTBEAT_SECONDS = 0.5


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class RunState:
    """What the training thread and the heartbeat thread share."""

    step: int | None = None  # None until the trainer is built (the heartbeat leaves it alone)
    cancel: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)


class Heartbeat(threading.Thread):
    """Every HEARTBEAT_SECONDS: extend the lease, publish the step, notice a cancel.

    A beat that fails (the database restarting, say) is only missed: the next one tries
    again, and the lease stays this worker's meanwhile (no one else can take it while the
    database is down; it lasts `lease` past the last beat that went through)."""

    def __init__(self, engine: Engine, job_id: str, owner: str, state: RunState, lease: timedelta):
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.engine, self.job_id, self.owner, self.state = engine, job_id, owner, state
        self.lease = lease
        self.done = threading.Event()

    def beat(self) -> None:
        with self.engine.begin() as conn:
            status = jobs.heartbeat(conn, self.job_id, self.owner, self.state.step, self.lease)
        if status is None:
            self.state.lost.set()
        elif status == "cancelling":
            self.state.cancel.set()

    def run(self) -> None:
        failing = False
        while not self.done.wait(HEARTBEAT_SECONDS):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease is 60 s
                if not is_transient(exc):
                    log.exception("heartbeat of job %s failed", self.job_id)
                elif not failing:
                    log.warning(
                        "heartbeat of job %s: database unreachable, retrying: %s",
                        self.job_id,
                        first_line(exc),
                    )
                failing = True
            else:
                if failing:
                    log.info("heartbeat of job %s: database reachable again", self.job_id)
                failing = False


def run_job(
    job_id: str,
    *,
    engine: Engine,
    store: ArtifactStore,
    owner: str | None = None,
    shutting_down: threading.Event | None = None,
    lease: timedelta = jobs.LEASE,
) -> str:
    """Run a queued job to its end. Returns the final status, `skipped` when the job was not
    queued (a second delivery of the same id), or `requeued` when the worker shut down."""
    owner = owner or worker_id()
    with engine.begin() as conn:
        if not jobs.claim(conn, job_id, owner, lease):
            log.info("job %s is not queued; nothing to do", job_id)
            return "skipped"
    log.info("job %s claimed by %s", job_id, owner)
    state = RunState()
    heart = Heartbeat(engine, job_id, owner, state, lease)
    shutting_down = shutting_down or threading.Event()
    status, error = "failed", None
    heart.start()  # at once: building the trainer can take longer than a short lease
    try:
        status = _train(engine, store, job_id, owner, lease, state, shutting_down)
    except jobs.LeaseLost:
        status = "lost"
    except (TrainingDiverged, DataError, CheckpointError, ValueError) as exc:
        error = str(exc)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        where = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "host"
        detail = (str(exc).splitlines() or [type(exc).__name__])[0]
        error = f"out of memory ({where}) at step {state.step}: {detail}"
        log.error("job %s ran out of memory", job_id)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded on the job
        error = f"{type(exc).__name__}: {exc}"
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
    finally:
        heart.done.set()
        if heart.is_alive():
            heart.join()

    def record_outcome() -> str:
        with engine.begin() as conn:
            if status == "requeued":
                return "requeued" if jobs.release(conn, job_id, owner, state.step) else "cancelled"
            if status != "lost":
                jobs.finish(conn, job_id, owner, status, state.step, error)
            return status

    status = retry_transient(
        record_outcome, within=lease.total_seconds(), what=f"job {job_id}: finish"
    )
    log.info("job %s %s at step %s%s", job_id, status, state.step, f": {error}" if error else "")
    return status


def _train(
    engine: Engine,
    store: ArtifactStore,
    job_id: str,
    owner: str,
    lease: timedelta,
    state: RunState,
    shutting_down: threading.Event,
) -> str:
    """Build the trainer and train; how it ended. For a distributed job this process is
    rank 0: the other ranks run (and load the same checkpoint) inside `ranks`."""
    spec, checkpoint, datasets = _load_job(engine, store, job_id)
    with ranks(spec, resume=checkpoint, datasets=datasets) as rank:
        trainer = Trainer(spec, resolve_dataset=datasets.__getitem__, rank=rank)
        if checkpoint is not None:
            trainer.load(checkpoint)
        _rewind(engine, store, job_id, trainer.step)
        state.step = trainer.step
        sinks = service_sinks(engine, store, job_id, owner, lease.total_seconds())

        def should_stop() -> bool:
            return state.cancel.is_set() or state.lost.is_set() or shutting_down.is_set()

        def progress(step: int, _values: dict[str, float] | None) -> None:
            state.step = step

        try:
            result = trainer.run(sinks, should_stop=should_stop, progress=progress)
        finally:
            if not state.lost.is_set():
                sinks.metrics.flush()  # type: ignore[attr-defined]
    state.step = result.step
    if result.status == "succeeded":
        return "succeeded"
    if state.lost.is_set():
        return "lost"
    if state.cancel.is_set():
        return "cancelled"
    return "requeued"


def _load_job(
    engine: Engine, store: ArtifactStore, job_id: str
) -> tuple[TrainSpec, Checkpoint | None, dict[str, Path]]:
    """The job's spec, its latest checkpoint (SHA-256 checked) and its uploaded dataset's
    path (by id: every rank opens the same file)."""
    with Session(engine) as session:
        job = session.get(Job, job_id)
        assert job is not None
        spec = TrainSpec.model_validate(job.spec)
        latest = session.scalars(
            select(CheckpointRow)
            .where(CheckpointRow.job_id == job_id)
            .order_by(CheckpointRow.step.desc())
            .limit(1)
        ).first()
        datasets: dict[str, Path] = {}
        if spec.data.dataset_id is not None:
            datasets[spec.data.dataset_id] = resolve_dataset_path(
                session, store, spec.data.dataset_id
            )
        checkpoint = None
        if latest is not None:
            checkpoint = read_checkpoint(store.path(latest.path), expected_sha256=latest.sha256)
    return spec, checkpoint, datasets


def _rewind(engine: Engine, store: ArtifactStore, job_id: str, step: int) -> None:
    """Forget what an earlier attempt recorded after the step the run continues from."""
    with engine.begin() as conn:
        stale = jobs.rewind(conn, job_id, step)
    for path in stale:
        store.delete(path)
        if path.endswith(".safetensors"):
            store.delete(path[: -len(".safetensors")] + ".json")
