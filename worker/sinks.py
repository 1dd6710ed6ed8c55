"""The trainer's sinks for the service: metric points into the database (buffered), samples
and checkpoints into the artifact store with a row each, warnings onto the job.

Every write is its own short transaction: no transaction stays open across training. A
write that meets a database outage (a restarted server) is tried again, the whole
transaction, for up to `retry_for` seconds (the lease: past it the job may have moved on),
while training waits.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Connection, Engine, delete, insert, select, update

from app.db import retry_transient
from app.jobs import LEASE, fence
from app.metricstore import insert_points
from app.models import Checkpoint as CheckpointRow
from app.models import Job, Sample, utcnow
from app.retention import untrash
from app.store import ArtifactStore
from trainer.checkpoint import Checkpoint, CheckpointRecord
from trainer.sinks import Sinks

T = TypeVar("T")
log = logging.getLogger("ganforge.worker")
RETRY_FOR = LEASE.total_seconds()


def leased_write(
    engine: Engine, job_id: str, owner: str, retry_for: float, body: Callable[[Connection], T]
) -> T:
    """`body(conn)` in a transaction that first checks `owner` still holds the job (else
    LeaseLost), retried over database outages for up to `retry_for` seconds."""

    def attempt() -> T:
        with engine.begin() as conn:
            fence(conn, job_id, owner)
            return body(conn)

    return retry_transient(attempt, within=retry_for, what=f"job {job_id}: write")


class _LeasedSink:
    """What every service sink holds: the job, its lease owner, and how long a write rides
    out a database outage; `_write(body)` is `leased_write` with those."""

    def __init__(self, engine: Engine, job_id: str, owner: str, retry_for: float):
        self.engine, self.job_id, self.owner = engine, job_id, owner
        self.retry_for = retry_for

    def _write(self, body: Callable[[Connection], T]) -> T:
        return leased_write(self.engine, self.job_id, self.owner, self.retry_for, body)


class DatabaseMetrics(_LeasedSink):
    """Buffers metric points and writes them in batches: when `max_points` are waiting or
    `max_delay` seconds have passed since the last write (so live charts stay live)."""

    def __init__(
        self,
        engine: Engine,
        job_id: str,
        owner: str,
        *,
        max_points: int = 5000,
        max_delay: float = 1.0,
        retry_for: float = RETRY_FOR,
    ):
        super().__init__(engine, job_id, owner, retry_for)
        self.max_points, self.max_delay = max_points, max_delay
        self.buffer: list[tuple[str, int, float | None]] = []
        self.flushed_at = time.monotonic()
        self.written = 0

    def write(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.buffer.append((name, step, value if math.isfinite(value) else None))
        if (
            len(self.buffer) >= self.max_points
            or time.monotonic() - self.flushed_at >= self.max_delay
        ):
            self.flush()

    def flush(self) -> None:
        """Write the buffer in one transaction. The buffer is kept until it commits, so a
        failed attempt (rolled back, or committed without an answer: the points then exist
        and are overwritten with the same values) loses no point and stores none twice."""
        if self.buffer:
            points = self.buffer
            self._write(lambda conn: insert_points(conn, self.job_id, points))
            self.written += len(self.buffer)
            self.buffer = []
        self.flushed_at = time.monotonic()


class StoreSamples(_LeasedSink):
    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        job_id: str,
        owner: str,
        retry_for: float = RETRY_FOR,
    ):
        super().__init__(engine, job_id, owner, retry_for)
        self.store = store

    def write(self, step: int, png: bytes) -> None:
        path = self.store.sample_path(self.job_id, step)
        # The file first, outside the fenced transaction (the `db` store writes through its
        # own connection, which a held SQLite write lock would block): a row is never
        # without its file.
        self.store.write(path, png)

        def body(conn: Connection) -> None:
            conn.execute(delete(Sample).where(Sample.job_id == self.job_id, Sample.step == step))
            conn.execute(
                insert(Sample).values(job_id=self.job_id, step=step, path=path, size=len(png))
            )

        self._write(body)


class StoreCheckpoints(_LeasedSink):
    """Checkpoints into the store with a row each. The metric buffer is written first, so a
    checkpoint at step S means every metric point up to S is stored: a run resumed from it
    (after its worker died) has no gap."""

    def __init__(
        self,
        engine: Engine,
        store: ArtifactStore,
        job_id: str,
        owner: str,
        metrics: DatabaseMetrics | None = None,
        retry_for: float = RETRY_FOR,
    ):
        super().__init__(engine, job_id, owner, retry_for)
        self.store, self.metrics = store, metrics
        # Called with the step after each checkpoint is recorded (the retention pass).
        self.after_write: Callable[[int], None] | None = None

    def write(self, checkpoint: Checkpoint) -> CheckpointRecord:
        if self.metrics is not None:
            self.metrics.flush()
        folder = self.store.checkpoint_dir(self.job_id)
        tensors = f"{folder}/step_{checkpoint.step:06d}.safetensors"
        # A deleted checkpoint's files may still wait in the trash (a resumed job writing a
        # step again): forget them first, so a collection cannot take the new ones.
        retry_transient(
            lambda: untrash(self.engine, [tensors, self.store.sidecar_path(tensors)]),
            within=self.retry_for,
            what=f"job {self.job_id}: untrash",
        )
        path, _ = self.store.write_checkpoint(folder, checkpoint)  # files first, as samples
        record = CheckpointRecord(checkpoint.step, checkpoint.sha256, len(checkpoint.data), path)
        sidecar_size = len(checkpoint.sidecar_json.encode())

        def body(conn: Connection) -> CheckpointRecord:
            conn.execute(
                delete(CheckpointRow).where(
                    CheckpointRow.job_id == self.job_id, CheckpointRow.step == record.step
                )
            )
            conn.execute(
                insert(CheckpointRow).values(
                    job_id=self.job_id,
                    step=record.step,
                    path=path,
                    sha256=record.sha256,
                    size=record.size,
                    sidecar_size=sidecar_size,
                )
            )
            # Due until a retention pass finishes with it (the reconciler retries a finished
            # job's pass that failed, e.g. in a database outage at the job's end).
            conn.execute(update(Job).where(Job.id == self.job_id).values(retention_due_at=utcnow()))
            return record

        self._write(body)
        log.info(
            "job %s checkpointed at step %s",
            self.job_id,
            record.step,
            extra={"event": "checkpointed", "job_id": self.job_id, "step": record.step},
        )
        if self.after_write is not None:
            self.after_write(record.step)
        return record


class JobWarnings(_LeasedSink):
    """Appends run-time warnings (e.g. the first leak the audit saw) to the job's list."""

    def __init__(self, engine: Engine, job_id: str, owner: str, retry_for: float = RETRY_FOR):
        super().__init__(engine, job_id, owner, retry_for)

    def write(self, step: int, message: str) -> None:
        def body(conn: Connection) -> None:
            current = conn.scalar(select(Job.warnings).where(Job.id == self.job_id)) or []
            if message not in current:
                conn.execute(
                    update(Job).where(Job.id == self.job_id).values(warnings=[*current, message])
                )

        self._write(body)


def service_sinks(
    engine: Engine,
    store: ArtifactStore,
    job_id: str,
    owner: str,
    retry_for: float = RETRY_FOR,
    *,
    after_checkpoint: Callable[[int], None] | None = None,
) -> Sinks:
    """Sinks that write only while `owner` holds the job's lease (else raise LeaseLost),
    riding out database outages of up to `retry_for` seconds; `after_checkpoint(step)` runs
    after each checkpoint is recorded (the retention pass)."""
    metrics = DatabaseMetrics(engine, job_id, owner, retry_for=retry_for)
    checkpoints = StoreCheckpoints(engine, store, job_id, owner, metrics, retry_for)
    checkpoints.after_write = after_checkpoint
    return Sinks(
        metrics,
        StoreSamples(engine, store, job_id, owner, retry_for),
        checkpoints,
        JobWarnings(engine, job_id, owner, retry_for),
    )
