"""The reconciler: the database is the source of truth, the broker only carries wake-ups.

A message names a job, but it only wakes a worker of its queue, which claims the first queued
job of that queue (worker.claim); so what must hold is one message per queued job of each
queue, not a message per job id. Each pass (every worker runs one every
GANFORGE_RECONCILE_EVERY_SECONDS):

1. A job whose lease expired (its worker died without a word: kill -9, a lost machine) goes
   back to `queued` with a message sent for it, while `attempt < max_attempts`; the next
   worker resumes it from its last checkpoint. Past the attempts it is `failed`; a job the
   user was cancelling is `cancelled`.
2. A queue that holds fewer messages than it has queued jobs (the broker lost some: a flushed
   Redis, say) gets the difference sent again, for jobs queued for longer than
   GANFORGE_RESEND_AFTER_SECONDS (a younger one's message may be on its way). A surplus
   message is harmless: the worker it wakes finds nothing queued and does nothing.

3. With the artifact store given, files of deleted checkpoints whose grace period has
   passed are deleted (app.retention.collect_trash), completing what a crash interrupted.
4. With the store given, a finished job whose last retention pass did not finish (the
   worker's pass at the job's end failed: a database or store outage) gets its policy
   applied again (app.retention.apply), a few jobs a pass, until one succeeds.

Every change is a conditional UPDATE, so several reconcilers can run at once.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update

from app import jobs, queue, retention
from app.models import FINISHED, Job, JobStatus, utcnow
from app.settings import Settings
from app.store import ArtifactStore

log = logging.getLogger("ganforge.reconcile")


@dataclass
class Report:
    requeued: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    trashed: int = 0  # files of deleted checkpoints removed from the store
    retained: list[str] = field(default_factory=list)  # finished jobs whose policy was applied

    def __bool__(self) -> bool:
        return bool(
            self.requeued
            or self.failed
            or self.cancelled
            or self.resent
            or self.trashed
            or self.retained
        )


def reconcile(engine: Engine, settings: Settings, store: ArtifactStore | None = None) -> Report:
    report = Report()
    now = utcnow()
    with engine.connect() as conn:
        expired = (
            conn.execute(
                select(Job.id).where(
                    Job.status.in_((JobStatus.RUNNING, JobStatus.CANCELLING)),
                    Job.lease_expires_at < now,
                )
            )
            .scalars()
            .all()
        )
    for job_id in expired:
        with engine.begin() as conn:
            status = jobs.requeue_expired(conn, job_id, now)
        if status == JobStatus.QUEUED:
            report.requeued.append(job_id)
        elif status == JobStatus.FAILED:
            report.failed.append(job_id)
        elif status in (JobStatus.CANCELLED, JobStatus.PRUNED):
            report.cancelled.append(job_id)
        if status is not None:
            _log_expired(job_id, status)

    _resend_missing(engine, settings, report, now)
    if store is not None:
        try:
            report.trashed = len(retention.collect_trash(engine, store, now))
        except Exception:  # noqa: BLE001 - the trash waits for the next pass
            log.exception("reconcile: collecting the artifact trash failed")
        _retain_finished(engine, settings, store, report, now)
    if report:
        log.warning("reconciled: %s", report)
    return report


# Finished jobs whose retention pass is retried in one reconciler pass, oldest due first: a
# store outage costs each pass this many failing attempts, not one per finished job. A job
# whose pass fails goes to the back of the line, so one that always fails blocks no other.
RETAIN_PER_PASS = 5


def _retain_finished(
    engine: Engine, settings: Settings, store: ArtifactStore, report: Report, now: datetime
) -> None:
    with engine.connect() as conn:
        due = conn.scalars(
            select(Job.id)
            .where(Job.status.in_(FINISHED), Job.retention_due_at.is_not(None))
            .order_by(Job.retention_due_at)
            .limit(RETAIN_PER_PASS)
        ).all()
    for job_id in due:
        try:
            retention.apply(engine, store, job_id, settings, now=now)
        except Exception:  # noqa: BLE001 - still due: a later pass tries again
            log.exception("reconcile: job %s: the retention pass failed", job_id)
            with contextlib.suppress(Exception):  # the database down too: it stays where it is
                with engine.begin() as conn:
                    conn.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.retention_due_at.is_not(None))
                        .values(retention_due_at=now)
                    )
        else:
            report.retained.append(job_id)


def _log_expired(job_id: str, status: str) -> None:
    """The lifecycle line of a job whose lease the reconciler found expired."""
    why = "its lease expired: its worker stopped heartbeating"
    if status == JobStatus.QUEUED:
        event, fields = "requeued", {"reason": why}
    elif status == JobStatus.FAILED:
        event, fields = "failed", {"status": status, "reason": f"{why}, attempts used up"}
    else:
        event, fields = "finished", {"status": status, "reason": why}
    log.info(
        "job %s %s: %s",
        job_id,
        status,
        fields["reason"],
        extra={"event": event, "job_id": job_id, **fields},
    )


def _resend_missing(engine: Engine, settings: Settings, report: Report, now: datetime) -> None:
    """Send a message for each requeued job, and for stale queued jobs as many as their
    queue lacks (step 2 of the module's docstring)."""
    stale_before = now - timedelta(seconds=settings.resend_after_seconds)
    with engine.connect() as conn:
        queued = conn.execute(
            select(Job.id, Job.gpus, Job.queued_at)
            .where(Job.status == JobStatus.QUEUED)
            .order_by(Job.queued_at)
        ).all()
    by_queue: dict[str, list[tuple[str, bool]]] = {}
    for job_id, gpus, queued_at in queued:
        stale = queued_at is None or queued_at < stale_before
        by_queue.setdefault(queue.queue_name(settings, gpus), []).append((job_id, stale))
    depth = queue.queue_depth(settings, by_queue) if by_queue else {}
    for name, entries in by_queue.items():
        missing = len(entries) - depth.get(name, 0)
        for job_id, _ in entries:
            if job_id in report.requeued:  # its message went with its dead worker
                _resend(engine, settings, job_id, name, now)
                missing -= 1
        for job_id, stale in entries:
            if missing <= 0:
                break
            if stale and job_id not in report.requeued:
                _resend(engine, settings, job_id, name, now)
                report.resent.append(job_id)
                missing -= 1


def _resend(
    engine: Engine, settings: Settings, job_id: str, queue_name: str, now: datetime
) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(queued_at=now)
        )
    queue.send(settings, job_id, queue_name)
