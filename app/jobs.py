"""Job state transitions, each one conditional UPDATE so that concurrent parties cannot race.

    queued --claim--> running --finish--> succeeded | failed | cancelled
    queued --set_priority--> queued (a free worker claims the first of `next_queued`)
    queued --cancel--> cancelled            running --cancel--> cancelling --finish--> cancelled
    running --prune (a sweep's pruner)--> cancelling, pruned_at set --finish--> pruned
    failed | cancelled --resume--> queued   running --release (worker shutting down)--> queued

The worker holds a lease (`lease_owner`, `lease_expires_at`) that its heartbeats extend;
`finish` and `heartbeat` only touch a job whose lease the caller still holds. The GPUs a run
holds (app.devices) share that lease: extended with it, released when the run ends.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, case, delete, select, update

from app import devices as device_leases
from app.models import (
    FINISHED,
    Checkpoint,
    Job,
    JobStatus,
    JobTag,
    MetricPoint,
    Sample,
    utcnow,
)
from trainer.spec import TrainSpec

LEASE = timedelta(seconds=60)


class LeaseLost(RuntimeError):
    """This worker no longer holds the job (its lease expired and the job moved on)."""


def fence(conn: Connection, job_id: str, owner: str) -> None:
    """Raise LeaseLost unless `owner` holds the job; call it in the transaction of a write,
    so a worker that lost its job cannot write over the new owner's results."""
    held = conn.scalar(
        select(Job.id).where(Job.id == job_id, Job.lease_owner == owner).with_for_update()
    )
    if held is None:
        raise LeaseLost(f"job {job_id}: the lease of {owner} is gone")


def new_job(
    spec: TrainSpec,
    *,
    name: str | None = None,
    priority: int = 0,
    created_by: str | None = None,
    tags: Sequence[str] = (),
    sweep_id: str | None = None,
    trial_number: int | None = None,
    trial_params: dict[str, Any] | None = None,
) -> Job:
    """A queued job for a validated spec (defaults filled in), not yet added to a session:
    what `POST /api/jobs` stores, and a sweep's controller for each trial."""
    return Job(
        name=name or spec.name,
        status=JobStatus.QUEUED,
        steps=spec.steps,
        spec=spec.model_dump(mode="json"),
        warnings=spec.warnings(),
        priority=priority,
        gpus=spec.gpus,
        queued_at=utcnow(),
        created_by=created_by,
        tag_rows=[JobTag(tag=t, position=i) for i, t in enumerate(tags)],
        sweep_id=sweep_id,
        trial_number=trial_number,
        trial_params=trial_params,
    )


class TransitionError(ValueError):
    """The job is not in a state that allows the transition (the API answers 409)."""


def claim(
    conn: Connection,
    job_id: str,
    owner: str,
    lease: timedelta = LEASE,
    *,
    worker: str | None = None,
    devices: Sequence[str] = (),
) -> bool:
    """Take a queued job; False when it is not queued (already taken, cancelled, deleted).
    `worker` (default: `owner`) and `devices` are recorded on the job."""
    now = utcnow()
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            attempt=Job.attempt + 1,
            lease_owner=owner,
            lease_expires_at=now + lease,
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
            error=None,
            worker=worker or owner,
            devices=list(devices),
        )
    )
    return result.rowcount == 1


# The order free workers take queued jobs in: highest priority first, then first submitted
# (a requeue, a resume or a re-sent message keeps a job's place), then id.
QUEUE_ORDER: Final = (Job.priority.desc(), Job.created_at, Job.id)


def next_queued(
    conn: Connection,
    gpus: Collection[int] | None,
    *,
    skip: Collection[str] = (),
    limit: int = 16,
) -> list[str]:
    """The first `limit` queued jobs holding `gpus` GPUs (any count when None), in the order
    a free worker takes them (QUEUE_ORDER), leaving out the ids in `skip`."""
    query = select(Job.id).where(Job.status == JobStatus.QUEUED)
    if gpus is not None:
        query = query.where(Job.gpus.in_(list(gpus)))
    if skip:
        query = query.where(Job.id.not_in(list(skip)))
    return list(conn.scalars(query.order_by(*QUEUE_ORDER).limit(limit)))


def set_priority(conn: Connection, job_id: str, priority: int) -> None:
    """Change the priority of a queued job (workers read it when they pick their next job);
    TransitionError when the job is not queued."""
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(priority=priority)
    )
    if result.rowcount != 1:
        status = conn.scalar(select(Job.status).where(Job.id == job_id))
        raise TransitionError(
            f"job {job_id} is {status}; only a queued job's priority can be changed"
        )


def heartbeat(
    conn: Connection, job_id: str, owner: str, step: int | None, lease: timedelta = LEASE
) -> str | None:
    """Extend the lease and record progress (`step`, unless None); the job's status, or None
    if the lease is lost."""
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now, "lease_expires_at": now + lease}
    if step is not None:
        values["step"] = step
    result = conn.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.lease_owner == owner,
            Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
        )
        .values(**values)
    )
    if result.rowcount != 1:
        return None
    device_leases.extend(conn, job_id, owner, now + lease)
    status: str | None = conn.scalar(select(Job.status).where(Job.id == job_id))
    return status


def finish(
    conn: Connection,
    job_id: str,
    owner: str,
    status: str,
    step: int | None,
    error: str | None = None,
) -> bool:
    """Record the outcome of the caller's run: succeeded, failed or cancelled."""
    assert status in FINISHED
    values: dict[str, Any] = {
        "status": _cancelled_or_pruned() if status == JobStatus.CANCELLED else status,
        **({} if step is None else {"step": step}),
        "error": error,
        "finished_at": utcnow(),
        "lease_owner": None,
        "lease_expires_at": None,
    }
    result = conn.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.lease_owner == owner,
            Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
        )
        .values(**values)
    )
    device_leases.release(conn, job_id, owner)
    return result.rowcount == 1


def release(conn: Connection, job_id: str, owner: str, step: int | None) -> bool:
    """Give a running job back to the queue (the worker is shutting down); a job the user
    asked to cancel meanwhile is cancelled instead. True when it went back to `queued`."""
    base = update(Job).where(Job.id == job_id, Job.lease_owner == owner)
    cleared: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
    if step is not None:
        cleared["step"] = step
    conn.execute(
        base.where(Job.status == JobStatus.CANCELLING).values(
            status=_cancelled_or_pruned(), finished_at=utcnow(), **cleared
        )
    )
    result = conn.execute(
        base.where(Job.status == JobStatus.RUNNING).values(
            status=JobStatus.QUEUED, queued_at=utcnow(), **cleared
        )
    )
    device_leases.release(conn, job_id, owner)
    return result.rowcount == 1


def request_cancel(conn: Connection, job_id: str) -> str:
    """Cancel: a queued job at once, a running one cooperatively. Returns the new status."""
    now = utcnow()
    queued = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=now)
    )
    if queued.rowcount == 1:
        return JobStatus.CANCELLED
    conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.CANCELLING)
    )
    status = conn.scalar(select(Job.status).where(Job.id == job_id))
    if status == JobStatus.CANCELLING:
        return status
    raise TransitionError(
        f"job {job_id} is {status}; only a queued or running job can be cancelled"
    )


def request_prune(conn: Connection, job_id: str, step: int, rule: str) -> bool:
    """Stop a running trial its sweep's pruner rejected at `step`: it stops like a cancel
    (with a checkpoint) and ends `pruned`, with the step and the rule recorded. False when
    the job is not running (finished meanwhile, or already stopping)."""
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING)
        .values(status=JobStatus.CANCELLING, pruned_at=step, prune_rule=rule[:200])
    )
    return result.rowcount == 1


def _cancelled_or_pruned() -> Any:
    """The final status of a job that was stopping: `pruned` when its pruner stopped it."""
    return case(
        (Job.pruned_at.is_not(None), JobStatus.PRUNED.value), else_=JobStatus.CANCELLED.value
    )


def request_resume(conn: Connection, job_id: str) -> None:
    """Requeue a failed or cancelled job; its worker continues from the last checkpoint."""
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_((JobStatus.FAILED, JobStatus.CANCELLED)))
        .values(status=JobStatus.QUEUED, error=None, finished_at=None, queued_at=utcnow())
    )
    if result.rowcount != 1:
        status = conn.scalar(select(Job.status).where(Job.id == job_id))
        raise TransitionError(
            f"job {job_id} is {status}; only a failed or cancelled job can be resumed"
        )


def rewind(conn: Connection, job_id: str, step: int) -> list[str]:
    """Forget what a job recorded after `step` (a resumed run writes it again).

    Returns the store paths of the samples and checkpoints removed, for the caller to delete.
    """
    paths: list[str] = []
    for model in (Sample, Checkpoint):
        rows = conn.execute(
            select(model.path).where(model.job_id == job_id, model.step > step)
        ).scalars()
        paths.extend(rows)
        conn.execute(delete(model).where(model.job_id == job_id, model.step > step))
    conn.execute(delete(MetricPoint).where(MetricPoint.job_id == job_id, MetricPoint.step > step))
    return paths


def requeue_expired(conn: Connection, job_id: str, now: datetime) -> str | None:
    """Deal with a job whose lease ran out (its worker died): `queued` again while attempts
    remain (it resumes from its checkpoint), `cancelled` when a cancel was pending, else
    `failed`. Returns the new status, or None when the lease was renewed meanwhile."""
    row = conn.execute(
        select(Job.status, Job.attempt, Job.max_attempts).where(
            Job.id == job_id,
            Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
            Job.lease_expires_at < now,
        )
    ).first()
    if row is None:
        return None
    status, attempt, max_attempts = row
    cleared = {"lease_owner": None, "lease_expires_at": None}
    if status == JobStatus.CANCELLING:
        values: dict[str, Any] = {"status": _cancelled_or_pruned(), "finished_at": now, **cleared}
    elif attempt < max_attempts:
        values = {"status": JobStatus.QUEUED, "queued_at": now, **cleared}
    else:
        values = {
            "status": JobStatus.FAILED,
            "finished_at": now,
            "error": f"worker lost: its lease expired on attempt {attempt} of {max_attempts}",
            **cleared,
        }
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == status, Job.lease_expires_at < now)
        .values(**values)
    )
    if result.rowcount != 1:
        return None
    device_leases.release(conn, job_id)  # expired with the job's lease; gone now
    return str(conn.scalar(select(Job.status).where(Job.id == job_id)))
