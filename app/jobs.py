"""Job state transitions, each one conditional UPDATE so that concurrent parties cannot race.

    queued --claim--> running --finish--> succeeded | failed | cancelled
    queued --cancel--> cancelled            running --cancel--> cancelling --finish--> cancelled
    failed | cancelled --resume--> queued   running --release (worker shutting down)--> queued

The worker holds a lease (`lease_owner`, `lease_expires_at`) that its heartbeats extend;
`finish` and `heartbeat` only touch a job whose lease the caller still holds.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, delete, select, update

from app.models import Checkpoint, Job, MetricPoint, Sample, utcnow

LEASE = timedelta(seconds=60)
FINISHED = ("cancelled", "succeeded", "failed")
ACTIVE = ("queued", "running", "cancelling")


class TransitionError(ValueError):
    """The job is not in a state that allows the transition (the API answers 409)."""


def claim(conn: Connection, job_id: str, owner: str) -> bool:
    """Take a queued job; False when it is not queued (already taken, cancelled, deleted)."""
    now = utcnow()
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(
            status="running",
            attempt=Job.attempt + 1,
            lease_owner=owner,
            lease_expires_at=now + LEASE,
            heartbeat_at=now,
            started_at=now,
            finished_at=None,
            error=None,
        )
    )
    return result.rowcount == 1


def heartbeat(conn: Connection, job_id: str, owner: str, step: int) -> str | None:
    """Extend the lease and record progress; the job's status, or None if the lease is lost."""
    now = utcnow()
    result = conn.execute(
        update(Job)
        .where(
            Job.id == job_id, Job.lease_owner == owner, Job.status.in_(("running", "cancelling"))
        )
        .values(heartbeat_at=now, lease_expires_at=now + LEASE, step=step)
    )
    if result.rowcount != 1:
        return None
    status: str | None = conn.scalar(select(Job.status).where(Job.id == job_id))
    return status


def finish(
    conn: Connection, job_id: str, owner: str, status: str, step: int, error: str | None = None
) -> bool:
    """Record the outcome of the caller's run: succeeded, failed or cancelled."""
    assert status in FINISHED
    values: dict[str, Any] = {
        "status": status,
        "step": step,
        "error": error,
        "finished_at": utcnow(),
        "lease_owner": None,
        "lease_expires_at": None,
    }
    result = conn.execute(
        update(Job)
        .where(
            Job.id == job_id, Job.lease_owner == owner, Job.status.in_(("running", "cancelling"))
        )
        .values(**values)
    )
    return result.rowcount == 1


def release(conn: Connection, job_id: str, owner: str, step: int) -> bool:
    """Give a running job back to the queue (the worker is shutting down); a job the user
    asked to cancel meanwhile is cancelled instead. True when it went back to `queued`."""
    base = update(Job).where(Job.id == job_id, Job.lease_owner == owner)
    cleared = {"step": step, "lease_owner": None, "lease_expires_at": None}
    conn.execute(
        base.where(Job.status == "cancelling").values(
            status="cancelled", finished_at=utcnow(), **cleared
        )
    )
    result = conn.execute(base.where(Job.status == "running").values(status="queued", **cleared))
    return result.rowcount == 1


def request_cancel(conn: Connection, job_id: str) -> str:
    """Cancel: a queued job at once, a running one cooperatively. Returns the new status."""
    now = utcnow()
    queued = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", finished_at=now)
    )
    if queued.rowcount == 1:
        return "cancelled"
    conn.execute(
        update(Job).where(Job.id == job_id, Job.status == "running").values(status="cancelling")
    )
    status = conn.scalar(select(Job.status).where(Job.id == job_id))
    if status in ("cancelling",):
        return status
    raise TransitionError(
        f"job {job_id} is {status}; only a queued or running job can be cancelled"
    )


def request_resume(conn: Connection, job_id: str) -> None:
    """Requeue a failed or cancelled job; its worker continues from the last checkpoint."""
    result = conn.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(("failed", "cancelled")))
        .values(status="queued", error=None, finished_at=None)
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
