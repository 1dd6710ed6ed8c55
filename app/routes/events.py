"""GET /api/jobs/{id}/events: Server-Sent Events for live pages.

Events (each `data:` is JSON):

    job       the whole job (as GET /api/jobs/{id}) on connect and whenever its status,
              warnings or error change
    progress  {"step", "steps", "status"} whenever the step moves
    metrics   new metric points, columnar like GET .../metrics: {"loss/d": {"step": [..],
              "value": [..]}, ...}
    sample    a new sample image {"id", "step", "url"}
    end       the job finished; the stream closes after it

The server polls the database (the source of truth, shared with the workers) every
`poll` seconds. Each event's id is `<metric step>:<sample id>`: a reconnecting EventSource
sends it back as Last-Event-ID and the stream continues from there without repeats; a
first connection can start past what the page already has with `since_step` and
`since_sample`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker, undefer
from starlette.concurrency import run_in_threadpool

from app.deps import SessionDep, job_or_404
from app.models import FINISHED, Job, MetricPoint, Sample
from app.schemas import JobOut

router = APIRouter(prefix="/api")

MAX_POINTS_PER_EVENT = 20_000


def _existing_job(job_id: str, session: SessionDep) -> str:
    job_or_404(session, job_id)  # a 404 before the stream starts
    return job_id


class _Cursor:
    def __init__(self, last_event_id: str | None):
        self.step, self.sample_id = -1, 0
        if last_event_id:
            try:
                step, sample = last_event_id.split(":", 1)
                self.step, self.sample_id = int(step), int(sample)
            except ValueError:
                pass

    @property
    def id(self) -> str:
        return f"{self.step}:{self.sample_id}"


def _poll(factory: sessionmaker[Session], job_id: str, cursor: _Cursor) -> dict[str, Any]:
    """One look at the database: the job, new metric points, new samples."""
    with factory() as session:
        job = session.get(Job, job_id, options=[undefer(Job.artifact_bytes)])
        if job is None:
            return {"job": None}
        rows = session.execute(
            select(MetricPoint.name, MetricPoint.step, MetricPoint.value)
            .where(MetricPoint.job_id == job_id, MetricPoint.step > cursor.step)
            .order_by(MetricPoint.step)
            .limit(MAX_POINTS_PER_EVENT)
        ).all()
        if len(rows) == MAX_POINTS_PER_EVENT:
            # Only whole steps: the last step may be cut; it comes with the next poll.
            last = rows[-1].step
            rows = [r for r in rows if r.step < last] or rows
        samples = session.execute(
            select(Sample.id, Sample.step)
            .where(Sample.job_id == job_id, Sample.id > cursor.sample_id)
            .order_by(Sample.id)
        ).all()
        return {"job": JobOut.model_validate(job), "points": rows, "samples": samples}


def _columnar(rows: list[Any]) -> dict[str, dict[str, list[Any]]]:
    series: dict[str, dict[str, list[Any]]] = {}
    for name, step, value in rows:
        column = series.setdefault(name, {"step": [], "value": []})
        column["step"].append(step)
        column["value"].append(value)
    return series


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    request: Request,
    job_id: Annotated[str, Depends(_existing_job)],
    poll: Annotated[float, Query(ge=0.05, le=10, description="seconds between looks")] = 0.5,
    since_step: Annotated[
        int | None, Query(ge=-1, description="send metric points after this step only")
    ] = None,
    since_sample: Annotated[
        int | None, Query(ge=0, description="send samples with a larger id only")
    ] = None,
    last_event_id: Annotated[str | None, Header()] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Live updates of one job until it finishes (see the module docstring for the events).

    A page that has just fetched the metrics and samples passes `since_step` and
    `since_sample` so the stream does not send them again; a reconnecting EventSource's
    Last-Event-ID takes precedence."""
    factory: sessionmaker[Session] = request.app.state.sessions
    cursor = _Cursor(last_event_id)
    if not last_event_id:
        cursor.step = -1 if since_step is None else since_step
        cursor.sample_id = since_sample or 0
    seen: dict[str, Any] = {}
    while True:
        state = await run_in_threadpool(_poll, factory, job_id, cursor)
        job: JobOut | None = state["job"]
        if job is None:
            yield ServerSentEvent(event="end", data={"status": "deleted"}, id=cursor.id)
            return
        shown = (job.status, job.warnings, job.error, job.attempt)
        if seen.get("job") != shown:
            seen["job"] = shown
            yield ServerSentEvent(event="job", data=job.model_dump(mode="json"), id=cursor.id)
        if state["points"]:
            cursor.step = state["points"][-1].step
            yield ServerSentEvent(event="metrics", data=_columnar(state["points"]), id=cursor.id)
        for sample_id, step in state["samples"]:
            cursor.sample_id = sample_id
            url = f"/api/jobs/{job_id}/samples/{sample_id}"
            yield ServerSentEvent(
                event="sample", data={"id": sample_id, "step": step, "url": url}, id=cursor.id
            )
        if seen.get("step") != job.step:
            seen["step"] = job.step
            progress = {"step": job.step, "steps": job.steps, "status": job.status}
            yield ServerSentEvent(event="progress", data=progress, id=cursor.id)
        if job.status in FINISHED:
            yield ServerSentEvent(event="end", data={"status": job.status}, id=cursor.id)
            return
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll)
