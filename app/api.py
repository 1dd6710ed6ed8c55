"""The REST API under /api (DESIGN.md section 5): jobs, their lifecycle, health.

Artifacts, metrics, datasets, events and monitoring live in app.routes.*."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import Connection, CursorResult, Engine, delete, select, text, tuple_, update
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, joinedload, sessionmaker

from app import jobs, queue, web
from app.auth import CallerDep, authorize, parse_env_tokens, tokens_exist
from app.db import make_engine
from app.deps import SessionDep, SettingsDep, StoreDep, field_error, job_or_404, unprocessable
from app.devices import device_report
from app.hostguard import BrowserGuard, HostPolicy
from app.models import FINISHED, JOB_STATUSES, Job, JobTag, utcnow
from app.routes import artifacts, datasets, events, metrics, monitoring, specs
from app.routes import auth as auth_routes
from app.schemas import JobCreate, JobOut, JobPage
from app.settings import Settings, get_settings
from app.speccheck import service_problems
from app.store import ArtifactStore
from trainer.errors import first_line
from trainer.spec import describe_error

router = APIRouter(prefix="/api")


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
    job = Job(
        name=body.name or spec.name,
        status="queued",
        steps=spec.steps,
        spec=spec.model_dump(mode="json"),
        warnings=spec.warnings(),
        priority=body.priority,
        queued_at=utcnow(),
        created_by=caller.token,
        tag_rows=[JobTag(tag=t, position=i) for i, t in enumerate(body.tags)],
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
    query = select(Job).order_by(Job.created_at.desc(), Job.id.desc())
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


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(job_id: str, request: Request) -> Response:
    """The job. The dashboard's hot path: one indexed query (tags joined) on the event loop,
    in autocommit, serialized once; no thread-pool hops (measured in bench/service.py)."""
    factory: sessionmaker[Session] = request.app.state.read_sessions
    with factory() as session:
        job = session.get(Job, job_id, options=[joinedload(Job.tag_rows)])
        if job is None:
            raise HTTPException(404, f"job {job_id} not found")
        body = JobOut.model_validate(job).model_dump_json()
    return Response(body, media_type="application/json")


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
    try:
        queue.send(settings, job_id, queue_name)
    except Exception as exc:  # noqa: BLE001
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "queued")
            .values(status="failed", error=f"broker: cannot queue the job: {first_line(exc)}")
        )
        session.commit()
        raise HTTPException(503, f"broker: cannot queue the job: {first_line(exc)}") from None
    return _fresh(session, job_id)


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


@router.get("/health")
def health(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """Liveness, database and broker reachability (503 when either does not answer), and
    each worker host's GPUs: `{"host": {"total": 2, "free": 1, "busy": 1}}`."""
    hosts: dict[str, dict[str, int]] = {}
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
        report = device_report(session.connection(), settings)
        hosts = {host: entry.summary() for host, entry in report.items()}
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        database = f"unreachable: {first_line(exc)}"
    try:
        queue.ping(settings)
        broker = "ok"
    except Exception as exc:  # noqa: BLE001
        broker = f"unreachable: {first_line(exc)}"
    ok = database == broker == "ok"
    return JSONResponse(
        {
            "status": "ok" if ok else "degraded",
            "database": database,
            "broker": broker,
            "broker_kind": queue.broker_kind(settings.effective_broker_url),
            "devices": hosts,
        },
        status_code=200 if ok else 503,
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Each error with `field` (dotted path in the body) and a one-line `message`."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "json_invalid" or loc == ["body"]:
            # The body as a whole: not JSON, or JSON of the wrong kind (an array, say).
            reason = str(err.get("ctx", {}).get("error", "")) or err["msg"]
            message = (
                f"body: not valid JSON ({reason})"
                if err["type"] == "json_invalid"
                else (f"body: {err['msg']}")
            )
            out.append(
                {
                    "field": "body",
                    "message": message,
                    "msg": err["msg"],
                    "loc": err["loc"],
                    "type": err["type"],
                }
            )
            continue
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        # Errors inside the spec are described as `ganforge train` describes them.
        scope = loc[:1] if loc[:1] == ["spec"] else []
        field, reason = describe_error({**err, "loc": loc[len(scope) :]})
        field = ".".join(scope + ([field] if field else []))
        out.append(
            {
                "field": field,
                "message": f"{field}: {reason}" if field else reason,
                "msg": err["msg"],
                "loc": err["loc"],
                "type": err["type"],
            }
        )
    return out


async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
    # E.g. a NUL byte in a path id: PostgreSQL refuses it before any row is looked at.
    return JSONResponse(
        {"detail": "request: holds a value the database cannot store (a NUL byte?)"},
        status_code=422,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _field_errors(exc)}, status_code=422)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The API on the settings' database (migrations must have run: `ganforge db upgrade`)."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url)
    # Every route passes app.auth.authorize: writes and downloads need a token once one exists.
    app = FastAPI(title="ganforge", version="0.1.0", dependencies=[Depends(authorize)])
    app.state.settings = settings
    app.state.env_tokens = parse_env_tokens(settings.api_tokens)
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    # Plain reads without BEGIN/ROLLBACK round trips.
    app.state.read_sessions = sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False
    )
    app.state.store = ArtifactStore(settings.artifact_dir)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _unstorable)
    app.include_router(router)
    for module in (metrics, artifacts, datasets, events, monitoring, specs, auth_routes):
        app.include_router(module.router)
    web.mount(app)
    app.add_middleware(
        BrowserGuard,
        policy=HostPolicy.parse(settings.allowed_hosts),
        tokens_on=_tokens_on(app.state.sessions, app.state.env_tokens),
    )
    return app


def _tokens_on(
    factory: sessionmaker[Session], env: list[tuple[str, str]]
) -> Callable[[], Awaitable[bool]]:
    """Whether API tokens exist; once they do they always will (a revoked token keeps its
    row), so a yes is remembered."""
    known = bool(env)

    def ask() -> bool:
        with factory() as session:
            return tokens_exist(session, env)

    async def tokens_on() -> bool:
        nonlocal known
        known = known or await run_in_threadpool(ask)
        return known

    return tokens_on
