"""The sweeps API (DESIGN.md section 9): submit, list, read, cancel, delete. The trials are
jobs (`sweep_id` on each); app.sweep_controller creates them."""

from __future__ import annotations

import os
import socket
from typing import Annotated, cast

from fastapi import APIRouter, BackgroundTasks, HTTPException, Query
from fastapi.responses import Response
from sqlalchemy import Engine

from app import sweeps
from app.auth import CallerDep
from app.deps import SessionDep, SettingsDep, StoreDep, field_error
from app.models import Sweep
from app.schemas import SweepCreate, SweepOut, SweepPage
from app.sweep_controller import run_controller_pass

router = APIRouter(prefix="/api", tags=["sweeps"])


def _sweep_or_404(session: SessionDep, sweep_id: str) -> Sweep:
    sweep = session.get(Sweep, sweep_id)
    if sweep is None:
        raise HTTPException(404, f"sweep {sweep_id} not found")
    return sweep


@router.post("/sweeps", status_code=201)
def create_sweep(
    body: SweepCreate,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    background: BackgroundTasks,
) -> SweepOut:
    """Store a sweep (status `running`) after checking every trial it may create; its first
    trials are created at once, the rest by the workers' controllers."""
    try:
        sweep = sweeps.create(body, session, settings, created_by=caller.token)
    except sweeps.SweepRefused as exc:
        raise HTTPException(
            422, [field_error(field, reason, loc) for field, reason, loc in exc.problems]
        ) from None
    engine = cast(Engine, session.get_bind())
    # After the answer: a first controller pass, so the trials need not wait for a worker's.
    owner = f"api:{socket.gethostname()}:{os.getpid()}"
    background.add_task(run_controller_pass, engine, settings, owner, sweep_ids=[sweep.id])
    return sweeps.view(session, sweep)


@router.get("/sweeps")
def list_sweeps(session: SessionDep, limit: Annotated[int, Query(ge=1, le=200)] = 50) -> SweepPage:
    """Sweeps, newest first, each with its trials."""
    return SweepPage(items=sweeps.list_sweeps(session, limit))


@router.get("/sweeps/{sweep_id}")
def get_sweep(sweep_id: str, session: SessionDep) -> SweepOut:
    """The sweep: its trials (parameters, status, objective, pruned step), counts, the best."""
    return sweeps.view(session, _sweep_or_404(session, sweep_id))


@router.post("/sweeps/{sweep_id}/cancel")
def cancel_sweep(sweep_id: str, session: SessionDep) -> SweepOut:
    """Stop a running sweep: no more trials; queued ones cancelled, running ones stopping."""
    _sweep_or_404(session, sweep_id)
    try:
        sweeps.cancel(session, sweep_id)
    except sweeps.SweepConflict as exc:
        raise HTTPException(409, str(exc)) from None
    session.expire_all()
    return sweeps.view(session, _sweep_or_404(session, sweep_id))


@router.delete("/sweeps/{sweep_id}", status_code=204)
def delete_sweep(
    sweep_id: str, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> Response:
    """Remove a finished or cancelled sweep whose trials have ended: its trial jobs with their
    metrics, samples and checkpoints, and its study."""
    _sweep_or_404(session, sweep_id)
    try:
        sweeps.remove(session, settings, store, sweep_id)
    except sweeps.SweepConflict as exc:
        raise HTTPException(409, str(exc)) from None
    return Response(status_code=204)
