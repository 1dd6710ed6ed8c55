"""Runs one job: claim it (with the GPUs it needs), train it with the service's sinks,
heartbeat, record the outcome.

`run_job` is what the Celery task calls; it needs nothing from Celery, so it can also be
driven directly (by a benchmark, say). A worker without GPUs trains in its own process. A
worker with GPUs (`Node.devices`) trains each job in a fresh process (worker.jobprocess) whose
CUDA_VISIBLE_DEVICES lists the job's devices, so the trainer's cuda:0, cuda:1, ... are the
job's and no other's: CUDA reads that variable once per process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket
import threading
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol

import torch
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from app import devices, jobs
from app.datasets import resolve_dataset_path
from app.db import is_transient, retry_transient
from app.models import Checkpoint as CheckpointRow
from app.models import Job
from app.store import ArtifactStore
from trainer.checkpoint import Checkpoint, CheckpointError, read_checkpoint
from trainer.data import DataError
from trainer.distributed import ranks
from trainer.errors import first_line
from trainer.spec import TrainSpec
from trainer.training import Trainer, TrainingDiverged
from worker.claim import BUSY, Claim, claim_when_free
from worker.node import Node, simulated
from worker.sinks import service_sinks

log = logging.getLogger("ganforge.worker")

HEARTBEAT_SECONDS = 0.5


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
        """A state a spawned job process can be given (shared memory and semaphores)."""
        ctx = multiprocessing.get_context("spawn")
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
    node: Node | None = None,
) -> str:
    """Run a queued job to its end. Returns the final status, `skipped` when the job was not
    queued (a second delivery of the same id), `requeued` when the worker shut down, or
    `busy` when the GPUs it needs stayed held by other jobs for `node.wait_seconds` (the job
    is still queued: the caller sends it again). Without a `node`, GPUs are not managed."""
    owner = owner or worker_id()
    shutting_down = shutting_down or threading.Event()
    claim = claim_when_free(engine, job_id, owner, lease, node, shutting_down)
    if claim is None:
        log.info("job %s is not queued; nothing to do", job_id)
        return "skipped"
    if claim == BUSY:
        log.info("job %s: its GPUs are held by other jobs; leaving it for later", job_id)
        return BUSY
    assert isinstance(claim, Claim)
    where = f" on devices {','.join(claim.devices)}" if claim.devices else ""
    log.info("job %s claimed by %s%s", job_id, owner, where)
    separate = node is not None and bool(node.devices)
    state = RunState.shared() if separate else RunState(stop=shutting_down)
    heart = Heartbeat(engine, job_id, owner, state, lease)
    status: str = "failed"
    error: str | None = claim.error
    heart.start()  # at once: building the trainer can take longer than a short lease
    try:
        if claim.error is None and node is not None and separate:
            from worker.jobprocess import run_in_child

            status, error = run_in_child(
                job_id,
                owner=owner,
                lease=lease,
                engine=engine,
                store=store,
                state=state,
                devices=claim.devices,
                simulate=node.simulate,
                shutting_down=shutting_down,
            )
        elif claim.error is None:
            simulate = node is not None and node.simulate
            status, error = attempt(engine, store, job_id, owner, lease, state, simulate=simulate)
    finally:
        heart.done.set()
        if heart.is_alive():
            heart.join()

    def record_outcome() -> str:
        with engine.begin() as conn:
            devices.release(conn, job_id, owner)
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


def attempt(
    engine: Engine,
    store: ArtifactStore,
    job_id: str,
    owner: str,
    lease: timedelta,
    state: RunState,
    *,
    simulate: bool = False,
) -> tuple[str, str | None]:
    """Train a claimed job: (how it ended, the error when it failed)."""
    try:
        return _train(engine, store, job_id, owner, lease, state, simulate=simulate), None
    except jobs.LeaseLost:
        return "lost", None
    except (TrainingDiverged, DataError, CheckpointError, ValueError) as exc:
        return "failed", str(exc)
    except (torch.OutOfMemoryError, MemoryError) as exc:
        where = "GPU" if isinstance(exc, torch.OutOfMemoryError) else "host"
        log.error("job %s ran out of memory", job_id)
        return "failed", f"out of memory ({where}) at step {state.step}: {first_line(exc)}"
    except Exception as exc:  # noqa: BLE001 - any failure is recorded on the job
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        return "failed", f"{type(exc).__name__}: {exc}"


def _train(
    engine: Engine,
    store: ArtifactStore,
    job_id: str,
    owner: str,
    lease: timedelta,
    state: RunState,
    *,
    simulate: bool,
) -> str:
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
        sinks = service_sinks(engine, store, job_id, owner, lease.total_seconds())

        def progress(step: int, _values: dict[str, float] | None) -> None:
            state.step = step

        try:
            result = trainer.run(sinks, should_stop=state.should_stop, progress=progress)
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
