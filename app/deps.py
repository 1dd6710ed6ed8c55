"""FastAPI dependencies shared by the routers: a database session, the settings, the store."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy import Engine
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


def engine_of(session: Session) -> Engine:
    """The engine a session's connections come from (for work in transactions of its own)."""
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def job_or_404(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id} not found")
    return job


def field_error(
    field: str, reason: str, loc: list[str | int], kind: str = "value_error"
) -> dict[str, Any]:
    """One entry of an error `detail`: our `field` and one-line `message`, beside the `loc`,
    `msg` and `type` that FastAPI's documented validation-error schema requires."""
    return {
        "field": field,
        "message": f"{field}: {reason}" if field else reason,
        "msg": reason,
        "loc": loc,
        "type": kind,
    }


def unprocessable(field: str, reason: str, where: str = "body") -> HTTPException:
    """A 422 shaped like the request-validation ones."""
    return HTTPException(422, [field_error(field, reason, [where, *field.split(".")])])
