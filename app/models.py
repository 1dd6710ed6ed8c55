"""ORM models: jobs and what they produce. The database is the source of truth for job state."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    cast,
    false,
    func,
    literal_column,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, deferred, mapped_column, relationship


class JobStatus(StrEnum):
    """A job's status (DESIGN.md section 5). Members are strings: they compare equal to, and
    store and serialize as, their values."""

    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    # A sweep's trial stopped by the study's pruner (its job stops with a checkpoint; the
    # step and the rule are on the job: pruned_at, prune_rule).
    PRUNED = "pruned"


JOB_STATUSES = tuple(JobStatus)
# A finished job is never picked up again (only `resume` requeues it); an active one may be.
FINISHED = (JobStatus.CANCELLED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PRUNED)
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING)

# Stable constraint names, so migrations can alter and drop them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A zone-aware timestamp, always read back in UTC: SQLite stores no zone and hands back
    naive datetimes, PostgreSQL hands back its session's zone. Every timestamp is UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in JOB_STATUSES) + ")", name="status"
        ),
        Index("ix_job_status_created_at", "status", "created_at"),
        # What a free worker reads to pick its next job: the queued ones of its queue, by
        # priority then age (app.jobs.next_queued).
        Index("ix_job_status_gpus_priority", "status", "gpus", "priority"),
        UniqueConstraint("sweep_id", "trial_number"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    step: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[int] = mapped_column(Integer)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    warnings: Mapped[list[str]] = mapped_column(JSON, default=list)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # Lease: the worker that holds the job and until when; heartbeats extend it.
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When its id was last put on the queue (the reconciler re-sends a message the broker lost).
    queued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The name of the API token that submitted it (None when the service needs no token).
    created_by: Mapped[str | None] = mapped_column(String(100))
    # Who ran its latest attempt (`host:pid:id` of the worker process) and on which of that
    # host's GPUs (`[]`: none); kept after the job ends.
    worker: Mapped[str | None] = mapped_column(String(200))
    devices: Mapped[list[str] | None] = mapped_column(JSON)
    # The GPUs the job holds (TrainSpec.gpus), hence its queue (app.queue.queue_name).
    gpus: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A sweep's trial: its sweep, its number in the sweep's Optuna study and the parameters
    # the study chose; a pruned trial's step and rule.
    sweep_id: Mapped[str | None] = mapped_column(
        ForeignKey("sweep.id", ondelete="CASCADE"), index=True
    )
    trial_number: Mapped[int | None] = mapped_column(Integer)
    trial_params: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    pruned_at: Mapped[int | None] = mapped_column(Integer)
    prune_rule: Mapped[str | None] = mapped_column(String(200))
    # When a checkpoint was last recorded that no retention pass has finished with since
    # (app.retention.apply clears it); the reconciler retries a finished job's pass while set.
    retention_due_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    if TYPE_CHECKING:
        # Bytes of its checkpoints and samples in the store (set below, once they exist).
        artifact_bytes: Mapped[int]

    tag_rows: Mapped[list[JobTag]] = relationship(
        cascade="all, delete-orphan", lazy="selectin", order_by="JobTag.position"
    )

    @property
    def tags(self) -> list[str]:
        return [row.tag for row in self.tag_rows]


class SweepStatus(StrEnum):
    RUNNING = "running"
    CANCELLED = "cancelled"
    FINISHED = "finished"


SWEEP_STATUSES = tuple(SweepStatus)


class Sweep(Base):
    """A set of trial jobs chosen by an Optuna study (DESIGN.md section 9). The study lives in
    the same database (Optuna's RDB storage, its own tables), named `study_name`."""

    __tablename__ = "sweep"
    __table_args__ = (
        CheckConstraint(
            "status IN (" + ", ".join(f"'{s}'" for s in SWEEP_STATUSES) + ")", name="status"
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default=SweepStatus.RUNNING.value)
    method: Mapped[str] = mapped_column(String(16))
    base: Mapped[dict[str, Any]] = mapped_column(JSON)
    space: Mapped[dict[str, Any]] = mapped_column(JSON)
    objective: Mapped[dict[str, Any]] = mapped_column(JSON)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)
    pruner: Mapped[dict[str, Any]] = mapped_column(JSON)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    study_name: Mapped[str] = mapped_column(String(100), unique=True)
    # Parameter combinations the study proposed whose spec was invalid: [{params, error}].
    skipped: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # The controller pass that holds the sweep (several reconcilers may run at once).
    controller_owner: Mapped[str | None] = mapped_column(String(200))
    controller_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_by: Mapped[str | None] = mapped_column(String(100))


class JobTag(Base):
    """One tag of a job; a table (not a JSON list) so the job list can filter by tag."""

    __tablename__ = "job_tag"

    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String(50), primary_key=True, index=True)
    position: Mapped[int] = mapped_column(Integer, default=0)


class MetricPoint(Base):
    __tablename__ = "metric_point"
    # The primary key serves one series; this serves "everything of a job after step N"
    # (the live event stream polls it), which would otherwise read the whole job.
    __table_args__ = (Index("ix_metric_point_job_id_step", "job_id", "step"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float)  # None: the value was NaN or inf


class _JobArtifact:
    """A file a job wrote at a step (columns shared by samples and checkpoints)."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Sample(_JobArtifact, Base):
    __tablename__ = "sample"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    size: Mapped[int | None] = mapped_column(BigInteger)  # None: stored before 0007


class Checkpoint(_JobArtifact, Base):
    __tablename__ = "checkpoint"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    # The JSON sidecar's size (None: stored before 0007, or by a writer that did not say).
    sidecar_size: Mapped[int | None] = mapped_column(BigInteger)
    # Kept whatever the job's retention policy says (POST .../checkpoints/{step}/pin).
    pinned: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


# No bound parameter in the expression: GET /api/jobs/{id} sends it as SQL text of its own.
_ZERO: ColumnElement[int] = literal_column("0")
# The bytes a job's artifacts take in the store: its checkpoints (tensors and sidecars) and
# its samples. A row stored before 0007 whose size is unknown (a sample's size, a sidecar's)
# counts 0. Deferred: loaded where a job is shown (app.schemas.JobOut), not by every query.
Job.artifact_bytes = deferred(
    cast(
        select(
            func.coalesce(
                func.sum(Checkpoint.size + func.coalesce(Checkpoint.sidecar_size, _ZERO)), _ZERO
            )
        )
        .where(Checkpoint.job_id == Job.id)
        .scalar_subquery()
        + select(func.coalesce(func.sum(Sample.size), _ZERO))
        .where(Sample.job_id == Job.id)
        .scalar_subquery(),
        BigInteger,
    )
)


class ArtifactFile(Base):
    """A file of the `db` artifact store (app/store_db.py): its path and the blob holding
    its bytes. A write puts a new blob's chunks and repoints the row in one transaction, so
    readers see the old file or the new one."""

    __tablename__ = "artifact_file"

    path: Mapped[str] = mapped_column(String(500), primary_key=True)
    blob: Mapped[str] = mapped_column(String(32), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ArtifactChunk(Base):
    """One chunk (at most app.store_db.CHUNK bytes) of a blob."""

    __tablename__ = "artifact_chunk"

    blob: Mapped[str] = mapped_column(String(32), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ArtifactTrash(Base):
    """Files whose rows are gone, to delete from the store once `delete_after` has passed
    (app/retention.py): a reader that began before the row went away finishes first, and a
    crash between the row and the file leaves only this note, which the next pass completes."""

    __tablename__ = "artifact_trash"

    path: Mapped[str] = mapped_column(String(500), primary_key=True)
    delete_after: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class Dataset(Base):
    __tablename__ = "dataset"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    filename: Mapped[str] = mapped_column(String(300))
    shape: Mapped[list[int]] = mapped_column(JSON)
    dtype: Mapped[str] = mapped_column(String(20))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str | None] = mapped_column(String(100))


class ApiToken(Base):
    """An API token (`ganforge token create NAME`). Only the SHA-256 of the token is kept;
    `prefix` is its public part, by which a presented token is found before the digests are
    compared in constant time. A revoked token stays, so revoking the last one does not open
    the service, and its name is not reused."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class DeviceLease(Base):
    """A GPU held by a running job: one row per device of a host, so no two jobs hold one.

    Taken in the transaction that claims the job, extended by its heartbeats, deleted when
    the run ends; a lease past `expires_at` (its worker was killed) is free again. `worker`
    is the lease owner of the run (`Job.lease_owner`)."""

    __tablename__ = "device_lease"

    host: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(100), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    worker: Mapped[str] = mapped_column(String(200))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())


class WorkerDevice(Base):
    """A GPU a live worker process serves (`ganforge worker --gpus`), written again every few
    seconds while it runs and deleted when it stops; the API reports each host's devices
    from these rows. Several workers may list the same device."""

    __tablename__ = "worker_device"

    worker: Mapped[str] = mapped_column(String(200), primary_key=True)
    device: Mapped[str] = mapped_column(String(100), primary_key=True)
    host: Mapped[str] = mapped_column(String(200), index=True)
    position: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
