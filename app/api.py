"""The REST API under /api (DESIGN.md section 5): jobs and health so far."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine, select, text, tuple_
from sqlalchemy.orm import sessionmaker

from app.db import make_engine
from app.deps import SessionDep, job_or_404
from app.models import JOB_STATUSES, Job, JobTag
from app.routes import artifacts, datasets, metrics
from app.schemas import JobCreate, JobOut, JobPage
from app.settings import Settings, get_settings
from app.store import ArtifactStore
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
        raise HTTPException(422, "cursor: not a cursor this API returned") from None


@router.post("/jobs", status_code=201)
def create_job(body: JobCreate, session: SessionDep) -> JobOut:
    """Store a job (status `queued`) with its validated spec, defaults filled in."""
    spec = body.spec
    job = Job(
        name=body.name or spec.name,
        status="queued",
        steps=spec.steps,
        spec=spec.model_dump(mode="json"),
        warnings=spec.warnings(),
        priority=body.priority,
        tag_rows=[JobTag(tag=t, position=i) for i, t in enumerate(body.tags)],
    )
    session.add(job)
    session.commit()
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
        raise HTTPException(422, f"status: must be one of {', '.join(JOB_STATUSES)}")
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


@router.get("/jobs/{job_id}")
def get_job(job_id: str, session: SessionDep) -> JobOut:
    return JobOut.model_validate(job_or_404(session, job_id))


@router.get("/health")
def health(session: SessionDep) -> JSONResponse:
    """Liveness and database reachability (503 when the database does not answer)."""
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        database = f"unreachable: {str(exc).splitlines()[0]}"
    ok = database == "ok"
    return JSONResponse(
        {"status": "ok" if ok else "degraded", "database": database}, status_code=200 if ok else 503
    )


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Each error with `field` (dotted path in the body) and a one-line `message`."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
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
                "loc": err["loc"],
                "type": err["type"],
            }
        )
    return out


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _field_errors(exc)}, status_code=422)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The API on the settings' database (migrations must have run: `ganforge db upgrade`)."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url)
    app = FastAPI(title="ganforge", version="0.1.0")
    app.state.settings = settings
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    app.state.store = ArtifactStore(settings.artifact_dir)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.include_router(router)
    for module in (metrics, artifacts, datasets):
        app.include_router(module.router)
    return app
