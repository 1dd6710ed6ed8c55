"""/api routes for keeping and deleting checkpoints (DESIGN.md section 10, app/retention.py).

    GET    /api/jobs/{id}/retention                   the plan: the policy in force, each
                                                      checkpoint kept or deleted and why
    POST   /api/jobs/{id}/checkpoints/{step}/pin      keep it whatever the policy says
    DELETE /api/jobs/{id}/checkpoints/{step}/pin      back under the policy
    DELETE /api/jobs/{id}/checkpoints/{step}          remove it (204); 409 when it is pinned
                                                      or the newest of an unfinished job

A deleted checkpoint's row goes at once; its files stay in the store for
GANFORGE_DELETE_GRACE_SECONDS (a download or `generate` that found the row finishes), then
the next collection (after each delete, the workers' reconciler) removes them. The writes
need a token once tokens exist, like every write (app/auth.py).
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from app import retention
from app.deps import SessionDep, SettingsDep, StoreDep, engine_of, job_or_404
from app.models import ACTIVE
from app.routes.artifacts import CheckpointOut, checkpoint_at, checkpoint_items
from app.settings import Settings

router = APIRouter(prefix="/api")


class PolicyOut(BaseModel):
    keep_last: int = Field(description="the newest N checkpoints are kept")
    keep_best: int = Field(description="the best M by best_metric are kept")
    best_metric: str
    mode: str = Field(description="min: lower is better; max: higher is")
    keeps_everything: bool = Field(description="keep_last and keep_best both 0")
    source: dict[str, str] = Field(
        description="where keep_last and keep_best come from: the spec, or the setting "
        "(GANFORGE_KEEP_LAST, GANFORGE_KEEP_BEST) for a field the spec leaves out"
    )


class RetentionItem(BaseModel):
    step: int
    size: int = Field(description="bytes of the .safetensors file")
    sidecar_size: int | None = Field(description="bytes of its JSON sidecar (None: unknown)")
    keep: bool
    reason: str = Field(description="every reason it is kept, or `outside the policy`")
    reasons: list[str]
    value: float | None = Field(
        description="best_metric at the largest metric step <= the checkpoint's step "
        "(None: no point, or NaN)"
    )
    pinned: bool
    best: bool = Field(description="the best by best_metric and mode")


class RetentionOut(BaseModel):
    job_id: str
    policy: PolicyOut
    items: list[RetentionItem] = Field(description="by step")
    bytes_kept: int = Field(description="tensors and sidecars of the checkpoints kept")
    bytes_deleted: int = Field(description="of those the policy deletes")
    delete_grace_seconds: float = Field(
        description="how long a deleted checkpoint's files stay for readers already at them"
    )


@router.get("/jobs/{job_id}/retention")
def get_retention(job_id: str, session: SessionDep, settings: SettingsDep) -> RetentionOut:
    """What the job's retention policy keeps and deletes now (the worker applies it after
    each checkpoint and when the job ends; nothing is deleted by this request)."""
    job = job_or_404(session, job_id)
    plan = retention.plan(session, job, settings)
    policy = plan.policy
    return RetentionOut(
        job_id=job_id,
        policy=PolicyOut(
            keep_last=policy.keep_last,
            keep_best=policy.keep_best,
            best_metric=policy.best_metric,
            mode=policy.mode,
            keeps_everything=policy.keeps_everything,
            source=policy.source,
        ),
        items=[
            RetentionItem(
                step=e.step,
                size=e.size,
                sidecar_size=e.sidecar_size,
                keep=e.keep,
                reason=e.reason,
                reasons=list(e.reasons),
                value=e.value,
                pinned=e.pinned,
                best=e.best,
            )
            for e in plan.entries
        ],
        bytes_kept=plan.bytes_kept,
        bytes_deleted=plan.bytes_deleted,
        delete_grace_seconds=settings.delete_grace_seconds,
    )


def _pin(
    session: Session, job_id: str, step: int, pinned: bool, settings: Settings
) -> CheckpointOut:
    job = job_or_404(session, job_id)
    checkpoint_at(session, job_id, step)  # 404 names the step
    if not retention.set_pinned(session.connection(), job_id, step, pinned):
        raise HTTPException(404, f"job {job_id} has no checkpoint at step {step}")
    session.commit()
    session.expire_all()
    return next(c for c in checkpoint_items(session, job, settings) if c.step == step)


@router.post(
    "/jobs/{job_id}/checkpoints/{step}/pin",
    responses={404: {"description": "unknown job, or no checkpoint at that step"}},
)
def pin_checkpoint(
    job_id: str, step: int, session: SessionDep, settings: SettingsDep
) -> CheckpointOut:
    """Keep this checkpoint forever, whatever the job's retention policy says."""
    return _pin(session, job_id, step, True, settings)


@router.delete(
    "/jobs/{job_id}/checkpoints/{step}/pin",
    responses={404: {"description": "unknown job, or no checkpoint at that step"}},
)
def unpin_checkpoint(
    job_id: str, step: int, session: SessionDep, settings: SettingsDep
) -> CheckpointOut:
    """Put a pinned checkpoint back under the retention policy (its next pass may delete
    it)."""
    return _pin(session, job_id, step, False, settings)


@router.delete(
    "/jobs/{job_id}/checkpoints/{step}",
    status_code=204,
    responses={
        404: {"description": "unknown job, or no checkpoint at that step"},
        409: {"description": "the checkpoint is pinned, or the newest of an unfinished job"},
    },
)
def delete_checkpoint(
    job_id: str, step: int, session: SessionDep, settings: SettingsDep, store: StoreDep
) -> Response:
    """Remove a checkpoint: its row at once, its files after the grace period. Refused (409)
    for a pinned checkpoint and for the newest of a job that is not finished (it resumes from
    it)."""
    job = job_or_404(session, job_id)
    checkpoint_at(session, job_id, step)
    active = job.status in ACTIVE
    session.rollback()  # the delete runs in a transaction of its own
    engine = engine_of(session)
    try:
        retention.delete_checkpoint(engine, job_id, step, settings, active=active)
    except retention.RetentionError as exc:
        raise HTTPException(409, str(exc)) from None
    except LookupError as exc:
        raise HTTPException(404, str(exc)) from None
    retention.collect_quietly(engine, store)  # earlier deletes whose grace has passed
    return Response(status_code=204)
