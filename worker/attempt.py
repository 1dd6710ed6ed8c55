"""One attempt of a claimed job: train it with the service's sinks and turn how that ended (a
result, or an exception) into an `Outcome`.

Both sides of a worker use it: `worker.runner` calls `attempt` in its own process (a worker
without GPUs), the job process of `worker.jobprocess` calls it in a fresh one (a worker with
GPUs). It knows nothing of claims, heartbeats or the node: those stay with the runner.
"""

from __future__ import annotations

import logging
import threading
import traceback
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import torch
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app import jobs, retention
from app.datasets import resolve_dataset_path
from app.models import Checkpoint as CheckpointRow
from app.models import Job, JobStatus
from app.store import ArtifactStore
from trainer.checkpoint import Checkpoint, CheckpointError
from trainer.data import DataError
from trainer.distributed import ranks
from trainer.errors import first_line
from trainer.processes import forkserver_context
from trainer.spec import TrainSpec
from trainer.training import Trainer, TrainingDiverged
from worker.node import simulated
from worker.sinks import service_sinks

log = logging.getLogger("ganforge.worker")


class Stopped(StrEnum):
    """An attempt that ended before the job did: nothing final is recorded on the job."""

    REQUEUED = "requeued"  # the worker is stopping: the job goes back to the queue
    LOST = "lost"  # the lease went to another worker (or the job was deleted): hands off


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: the job's final status (succeeded, failed, cancelled) or why it
    stopped short, and the error when it failed. Picklable: the job process sends it."""

    ending: JobStatus | Stopped
    error: str | None = None


class Flag(Protocol):
    def is_set(self) -> bool: ...
    def set(self) -> None: ...


class _Cell:
    value = -1


@dataclass
class RunState:
    """What the training, the heartbeat and (for a job in its own process) the worker share:
    the step reached, and the reasons to stop: a cancel, a lost lease, the worker stopping."""

    cancel: Flag = field(default_factory=threading.Event)
    lost: Flag = field(default_factory=threading.Event)
    stop: Flag = field(default_factory=threading.Event)
    cell: Any = field(default_factory=_Cell)  # the step; -1 until the trainer is built

    @classmethod
    def shared(cls) -> RunState:
        """A state a job process can be given (shared memory and semaphores)."""
        ctx = forkserver_context("worker.jobprocess")
        return cls(ctx.Event(), ctx.Event(), ctx.Event(), ctx.Value("q", -1, lock=False))

    @property
    def step(self) -> int | None:
        """None until the trainer is built (the heartbeat leaves the job's step alone)."""
        value = int(self.cell.value)
        return None if value < 0 else value

    @step.setter
    def step(self, value: int | None) -> None:
        self.cell.value = -1 if value is None else value

    def should_stop(self) -> bool:
        return self.cancel.is_set() or self.lost.is_set() or self.stop.is_set()


def attempt(
    engine: Engine,
    store: ArtifactStore,
    job_id: str,
    owner: str,
    lease: timedelta,
    state: RunState,
    *,
    simulate: bool = False,
) -> Outcome:
    """Train a claimed job: how it ended, with the error when it failed."""
    try:
        return Outcome(_train(engine, store, job_id, owner, lease, state, simulate=simulate))
    except jobs.LeaseLost:
        return Outcome(Stopped.LOST)
    except (TrainingDiverged, DataError, CheckpointError, ValueError) as exc:
        return Outcome(JobStatus.FAILED, str(exc))
    except (torch.OutOfMemoryError, MemoryError) as exc:
        where = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "host"
        log.error("job %s ran out of memory", job_id)
        error = f"out of memory ({where}) at step {state.step}: {first_line(exc)}"
        return Outcome(JobStatus.FAILED, error)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded on the job
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        return Outcome(JobStatus.FAILED, f"{type(exc).__name__}: {exc}")


def _train(
    engine: Engine,
    store: ArtifactStore,
    job_id: str,
    owner: str,
    lease: timedelta,
    state: RunState,
    *,
    simulate: bool,
) -> JobStatus | Stopped:
    """Build the trainer and train; how it ended. For a distributed job this process is
    rank 0: the other ranks run (and load the same checkpoint) inside `ranks`."""
    spec, checkpoint, datasets = _load_job(engine, store, job_id)
    if simulate:
        spec = simulated(spec)
    with ranks(spec, resume=checkpoint, datasets=datasets) as rank:
        trainer = Trainer(spec, resolve_dataset=datasets.__getitem__, rank=rank)
        if checkpoint is not None:
            trainer.load(checkpoint)
        _rewind(engine, store, job_id, trainer.step)
        state.step = trainer.step
        sinks = service_sinks(
            engine,
            store,
            job_id,
            owner,
            lease.total_seconds(),
            # After each checkpoint: delete what the job's retention policy does not keep
            # (an error is logged, never fails the job).
            after_checkpoint=lambda _step: retention.apply_quietly(engine, store, job_id),
        )

        def progress(step: int, _values: dict[str, float] | None) -> None:
            state.step = step

        try:
            result = trainer.run(sinks, should_stop=state.should_stop, progress=progress)
        finally:
            if not state.lost.is_set():
                sinks.metrics.flush()  # type: ignore[attr-defined]
    state.step = result.step
    if result.status == JobStatus.SUCCEEDED:  # the trainer's "succeeded" (else "stopped")
        return JobStatus.SUCCEEDED
    if state.lost.is_set():
        return Stopped.LOST
    if state.cancel.is_set():
        return JobStatus.CANCELLED
    return Stopped.REQUEUED


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
            checkpoint = store.load_checkpoint(latest.path, sha256=latest.sha256)
    return spec, checkpoint, datasets


def _rewind(engine: Engine, store: ArtifactStore, job_id: str, step: int) -> None:
    """Forget what an earlier attempt recorded after the step the run continues from."""
    with engine.begin() as conn:
        stale = jobs.rewind(conn, job_id, step)
    for path in stale:
        store.delete(path)
        if path.endswith(".safetensors"):
            store.delete(store.sidecar_path(path))
