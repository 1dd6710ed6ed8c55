"""The jobs API (DESIGN.md sections 5 and 9): submit, list, read, reprioritize, cancel, resume,
delete."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Connection, CursorResult, Engine, bindparam, delete, select, tuple_, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session, undefer

from app import jobs, queue, retention
from app.auth import CallerDep
from app.db import ReadPool
from app.deps import (
    SessionDep,
    SettingsDep,
    StoreDep,
    engine_of,
    field_error,
    job_or_404,
    unprocessable,
)
from app.models import FINISHED, JOB_STATUSES, Job, JobStatus, JobTag
from app.schemas import JobCreate, JobOut, JobPage
from app.speccheck import service_problems
from trainer.errors import first_line

router = APIRouter(prefix="/api")


class PriorityChange(BaseModel):
    """The body of `PATCH /api/jobs/{id}`: the queued job's new priority."""

    model_config = ConfigDict(extra="forbid")

    priority: int = Field(ge=-100, le=100, description="higher runs first; as on submission")


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        created, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        return datetime.fromisoformat(created), job_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise unprocessable("cursor", "not a cursor this API returned", where="query") from None


@router.post("/jobs", status_code=201)
def create_job(
    body: JobCreate, session: SessionDep, settings: SettingsDep, caller: CallerDep
) -> JobOut:
    """Store a job (status `queued`) with its validated spec, defaults filled in, and queue it."""
    spec = body.spec
    problems = service_problems(spec, session, settings)
    if problems:
        raise HTTPException(
            422, [field_error(field, reason, loc) for field, reason, loc in problems]
        )
    job = jobs.new_job(
        spec, name=body.name, priority=body.priority, created_by=caller.token, tags=body.tags
    )
    session.add(job)
    session.commit()
    try:
        queue.enqueue(settings, job.id, spec)
    except Exception as exc:  # noqa: BLE001 - no job may sit in the table without a message
        session.delete(job)
        session.commit()
        raise HTTPException(503, f"broker: cannot queue the job: {first_line(exc)}") from None
    return JobOut.model_validate(job)


@router.get("/jobs")
def list_jobs(
    session: SessionDep,
    status: Annotated[str | None, Query(description=", ".join(JOB_STATUSES))] = None,
    tag: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Jobs, newest first; `next_cursor` pages on."""
    if status is not None and status not in JOB_STATUSES:
        raise unprocessable("status", f"must be one of {', '.join(JOB_STATUSES)}", where="query")
    query = (
        select(Job)
        .options(undefer(Job.artifact_bytes))
        .order_by(Job.created_at.desc(), Job.id.desc())
    )
    if status is not None:
        query = query.where(Job.status == status)
    if tag is not None:
        query = query.where(Job.id.in_(select(JobTag.job_id).where(JobTag.tag == tag)))
    if cursor is not None:
        created, job_id = _decode_cursor(cursor)
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(created, job_id))
    jobs = list(session.scalars(query.limit(limit + 1)))
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobPage(
        items=[JobOut.model_validate(j) for j in jobs],
        next_cursor=_encode_cursor(jobs[-1]) if more else None,
    )


# GET /api/jobs/{id}: JobOut's columns and the tags, one row per tag (one row when none).
_JOB_FIELDS = [c for c in Job.__table__.c if c.key in JobOut.model_fields]
_ONE_JOB = (
    select(*_JOB_FIELDS, Job.artifact_bytes.label("artifact_bytes"), JobTag.tag)
    .outerjoin(JobTag, JobTag.job_id == Job.id)
    .where(Job.id == bindparam("job_id"))
    .order_by(JobTag.position)
)
# The same statement as PostgreSQL SQL with psycopg's %(job_id)s parameter, for app.db.ReadPool.
_ONE_JOB_SQL = str(_ONE_JOB.compile(dialect=postgresql.psycopg.dialect()))  # type: ignore[no-untyped-call]


async def _one_job_rows(request: Request, job_id: str) -> Sequence[Mapping[str, Any]]:
    pool: ReadPool | None = request.app.state.read_pool
    if pool is not None:  # PostgreSQL: the round trip waits on the loop
        return await pool.fetch(_ONE_JOB_SQL, {"job_id": job_id})
    engine: Engine = request.app.state.read_engine
    with engine.connect() as conn:  # SQLite: a file read, shorter than a thread hop
        rows = conn.execute(_ONE_JOB, {"job_id": job_id}).mappings().all()
        return cast(Sequence[Mapping[str, Any]], rows)


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, request: Request) -> Response:
    """The job. The dashboard's hot path: one indexed Core query (tags joined) on the event
    loop, in autocommit, serialized once; no ORM objects, no thread-pool hops (measured in
    bench/service.py)."""
    rows = await _one_job_rows(request, job_id)
    if not rows:
        raise HTTPException(404, f"job {job_id} not found")
    fields = {**rows[0], "tags": [row["tag"] for row in rows if row["tag"] is not None]}
    body = JobOut.model_validate(fields).model_dump_json()
    return Response(body, media_type="application/json")


@router.patch("/jobs/{job_id}")
def change_job(job_id: str, body: PriorityChange, session: SessionDep) -> JobOut:
    """Change a queued job's priority: free workers take the highest first (409 when the job
    is no longer queued)."""
    job_or_404(session, job_id)
    _transition(session, lambda conn, job: jobs.set_priority(conn, job, body.priority), job_id)
    return _fresh(session, job_id)


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, session: SessionDep) -> JobOut:
    """Cooperative cancel: a queued job is `cancelled` at once; a running one becomes
    `cancelling`, and its worker checkpoints and marks it `cancelled` within a second."""
    job_or_404(session, job_id)
    _transition(session, jobs.request_cancel, job_id)
    return _fresh(session, job_id)


@router.post("/jobs/{job_id}/resume")
def resume_job(job_id: str, session: SessionDep, settings: SettingsDep) -> JobOut:
    """Requeue a failed or cancelled job; it continues from its last checkpoint."""
    job = job_or_404(session, job_id)
    queue_name = queue.stored_queue(settings, job.spec)
    _transition(session, jobs.request_resume, job_id)
    # The job as resumed (queued), read before its message goes out: a fast worker may
    # claim it before a read after the send, and the answer would say `running`.
    resumed = _fresh(session, job_id)
    try:
        queue.send(settings, job_id, queue_name)
    except Exception as exc:  # noqa: BLE001
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
            .values(
                status=JobStatus.FAILED, error=f"broker: cannot queue the job: {first_line(exc)}"
            )
        )
        session.commit()
        raise HTTPException(503, f"broker: cannot queue the job: {first_line(exc)}") from None
    return resumed


@router.delete("/jobs/{job_id}", status_code=204)
def delete_job(job_id: str, session: SessionDep, store: StoreDep) -> Response:
    """Remove a finished job with its metrics, samples and checkpoints."""
    job_or_404(session, job_id)
    result = session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(FINISHED)))
    gone = cast(CursorResult[Any], result).rowcount
    session.commit()
    if gone != 1:
        status = session.scalar(select(Job.status).where(Job.id == job_id))
        raise HTTPException(
            409, f"job {job_id} is {status}; cancel it first (only a finished job is deleted)"
        )
    store.delete_job(job_id)
    retention.collect_quietly(engine_of(session), store)  # checkpoints deleted earlier, now due
    return Response(status_code=204)


def _transition(session: Session, change: Callable[[Connection, str], object], job_id: str) -> None:
    """Apply one of app.jobs' conditional transitions and commit; a refusal is a 409."""
    try:
        change(session.connection(), job_id)
        session.commit()
    except jobs.TransitionError as exc:
        session.rollback()
        raise HTTPException(409, str(exc)) from None


def _fresh(session: Session, job_id: str) -> JobOut:
    session.expire_all()
    return JobOut.model_validate(job_or_404(session, job_id))
