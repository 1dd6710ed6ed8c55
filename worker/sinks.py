"""The trainer's sinks for the service: metric points into the database (buffered), samples
and checkpoints into the artifact store with a row each, warnings onto the job.

Every write is its own short transaction: no transaction stays open across training.
"""

from __future__ import annotations

import math
import time

from sqlalchemy import Engine, delete, insert, select, update

from app.jobs import fence
from app.metricstore import insert_points
from app.models import Checkpoint as CheckpointRow
from app.models import Job, Sample
from app.store import ArtifactStore
from trainer.checkpoint import Checkpoint, CheckpointRecord, write_checkpoint
from trainer.sinks import Sinks


class DatabaseMetrics:
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
    ):
        self.engine, self.job_id, self.owner = engine, job_id, owner
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
        if self.buffer:
            with self.engine.begin() as conn:
                fence(conn, self.job_id, self.owner)
                insert_points(conn, self.job_id, self.buffer)
            self.written += len(self.buffer)
            self.buffer = []
        self.flushed_at = time.monotonic()


class StoreSamples:
    def __init__(self, engine: Engine, store: ArtifactStore, job_id: str, owner: str):
        self.engine, self.store, self.job_id, self.owner = engine, store, job_id, owner

    def write(self, step: int, png: bytes) -> None:
        path = self.store.sample_path(self.job_id, step)
        with self.engine.begin() as conn:
            fence(conn, self.job_id, self.owner)
            self.store.write(path, png)
            conn.execute(delete(Sample).where(Sample.job_id == self.job_id, Sample.step == step))
            conn.execute(insert(Sample).values(job_id=self.job_id, step=step, path=path))


class StoreCheckpoints:
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
    ):
        self.engine, self.store, self.job_id, self.owner = engine, store, job_id, owner
        self.metrics = metrics

    def write(self, checkpoint: Checkpoint) -> CheckpointRecord:
        if self.metrics is not None:
            self.metrics.flush()
        folder = self.store.path(self.store.checkpoint_dir(self.job_id))
        with self.engine.begin() as conn:
            fence(conn, self.job_id, self.owner)
            record = write_checkpoint(folder, checkpoint)
            assert record.path is not None
            path = self.store.relative(record.path)
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
                )
            )
        return record


class JobWarnings:
    """Appends run-time warnings (e.g. the first leak the audit saw) to the job's list."""

    def __init__(self, engine: Engine, job_id: str, owner: str):
        self.engine, self.job_id, self.owner = engine, job_id, owner

    def write(self, step: int, message: str) -> None:
        with self.engine.begin() as conn:
            fence(conn, self.job_id, self.owner)
            current = conn.scalar(select(Job.warnings).where(Job.id == self.job_id)) or []
            if message not in current:
                conn.execute(
                    update(Job).where(Job.id == self.job_id).values(warnings=[*current, message])
                )


def service_sinks(engine: Engine, store: ArtifactStore, job_id: str, owner: str) -> Sinks:
    """Sinks that write only while `owner` holds the job's lease (else raise LeaseLost)."""
    metrics = DatabaseMetrics(engine, job_id, owner)
    return Sinks(
        metrics,
        StoreSamples(engine, store, job_id, owner),
        StoreCheckpoints(engine, store, job_id, owner, metrics),
        JobWarnings(engine, job_id, owner),
    )
