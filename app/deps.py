"""FastAPI dependencies shared by the routers: a database session, the settings, the store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session, sessionmaker

from app.models import Job
from app.settings import Settings
from app.store import ArtifactStore


def get_session(request: Request) -> Iterator[Session]:
    factory: sessionmaker[Session] = request.app.state.sessions
    with factory() as session:
        yield session


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_store(request: Request) -> ArtifactStore:
    store: ArtifactStore = request.app.state.store
    return store


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
StoreDep = Annotated[ArtifactStore, Depends(get_store)]


def job_or_404(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


def unprocessable(field: str, reason: str, where: str = "body") -> HTTPException:
    """A 422 shaped like the request-validation ones: detail[].field and .message (plus the
    documented loc, msg, type)."""
    loc = [where, *field.split(".")]
    message = f"{field}: {reason}"
    detail = [
        {"field": field, "message": message, "msg": reason, "loc": loc, "type": "value_error"}
    ]
    return HTTPException(422, detail)
