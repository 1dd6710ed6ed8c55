"""Sweeps (DESIGN.md section 9): a set of trial jobs chosen by an Optuna study.

This module stores a submitted sweep (checked by app.sweep_space, its study created by
app.sweep_study), reads one back with its trials' objective values, and cancels and deletes
sweeps. The controller that creates the trials and feeds the study is app.sweep_controller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, exists, func, select, update
from sqlalchemy.orm import Session

from app import jobs, sweep_space, sweep_study
from app.models import ACTIVE, Job, JobStatus, MetricPoint, Sweep, SweepStatus, new_id, utcnow
from app.schemas import BestTrial, SkippedTrial, SweepCreate, SweepOut, TrialOut
from app.settings import Settings
from app.store import ArtifactStore
from trainer.spec import TrainSpec

log = logging.getLogger("ganforge.sweeps")

STEPS_PER_SECOND = "perf/steps_per_s"
LEAKS = ("audit/leak_d", "audit/leak_g")


class SweepRefused(ValueError):
    """A sweep that cannot be stored: (field, reason, loc) for each problem (a 422)."""

    def __init__(self, problems: list[sweep_space.Problem]):
        self.problems = problems
        super().__init__("; ".join(f"{field}: {reason}" for field, reason, _ in problems))


class SweepConflict(ValueError):
    """The sweep is not in a state that allows the request (a 409)."""


def study_name(sweep_id: str) -> str:
    return f"ganforge-sweep-{sweep_id}"


def create(
    body: SweepCreate, session: Session, settings: Settings, *, created_by: str | None
) -> Sweep:
    """Check and store a sweep (status `running`) and create its empty study; the controller
    creates its trials. SweepRefused when any trial it may create would be invalid."""
    problems = sweep_space.check(body, session, settings)
    if problems:
        raise SweepRefused(problems)
    sweep_id = new_id()
    sweep = Sweep(
        id=sweep_id,
        name=body.name,
        status=SweepStatus.RUNNING,
        method=body.method,
        base=body.base,
        space={path: dim.public() for path, dim in body.space.items()},
        objective=body.objective.model_dump(),
        budget=body.budget.model_dump(),
        pruner=_pruner_config(body),
        priority=body.priority,
        seed=body.seed,
        study_name=study_name(sweep_id),
        skipped=[],
        created_by=created_by,
    )
    sweep_study.create(settings.database_url, sweep)
    try:
        session.add(sweep)
        session.commit()
    except Exception:
        session.rollback()
        sweep_study.delete(settings.database_url, sweep.study_name)
        raise
    return sweep


def _pruner_config(body: SweepCreate) -> dict[str, Any]:
    """The pruner's options with step-based defaults where Optuna's would not fit: resources
    are training steps, judged at each evaluation (every.eval)."""
    config = body.pruner.public()
    base = TrainSpec.model_validate(body.base)
    first = base.every.eval or 1
    if config["kind"] == "asha":
        config.setdefault("min_resource", first)
    elif config["kind"] == "hyperband":
        config.setdefault("min_resource", first)
        longest = base.steps
        if "steps" in body.space:  # a varied length: the longest trial
            dim = body.space["steps"]
            ends = [v for v in dim.values or [dim.high] if isinstance(v, int | float)]
            longest = int(max(ends, default=base.steps))
        config.setdefault("max_resource", max(longest, config["min_resource"]))
    return config


def list_sweeps(session: Session, limit: int) -> list[SweepOut]:
    rows = session.scalars(select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id).limit(limit))
    return [view(session, sweep) for sweep in rows]


def view(session: Session, sweep: Sweep) -> SweepOut:
    """The sweep as the API shows it: its trials with their objective, counts, the best."""
    trial_jobs = session.execute(
        select(
            Job.id,
            Job.trial_number,
            Job.trial_params,
            Job.status,
            Job.step,
            Job.steps,
            Job.pruned_at,
            Job.prune_rule,
        )
        .where(Job.sweep_id == sweep.id)
        .order_by(Job.trial_number)
    ).all()
    ids = select(Job.id).where(Job.sweep_id == sweep.id).scalar_subquery()
    values = last_values(session, ids, sweep.objective["metric"])
    speeds = _means(session, ids, (STEPS_PER_SECOND,))
    leaks = _means(session, ids, LEAKS)
    trials = [
        TrialOut(
            job_id=row.id,
            number=row.trial_number,
            params=row.trial_params or {},
            status=row.status,
            value=values.get(row.id),
            pruned_at=row.pruned_at,
            prune_rule=row.prune_rule,
            step=row.step,
            steps=row.steps,
            steps_per_second=speeds.get(row.id),
            audit_leak=leaks.get(row.id),
        )
        for row in trial_jobs
    ]
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial.status] = counts.get(trial.status, 0) + 1
    return SweepOut(
        id=sweep.id,
        name=sweep.name,
        status=cast(Any, sweep.status),
        method=cast(Any, sweep.method),
        base=sweep.base,
        space=sweep.space,
        objective=sweep.objective,  # type: ignore[arg-type]
        budget=sweep.budget,  # type: ignore[arg-type]
        pruner=sweep.pruner,
        priority=sweep.priority,
        seed=sweep.seed,
        counts=counts,
        best=_best(trials, sweep.objective.get("mode", "max")),
        trials=trials,
        skipped=[SkippedTrial.model_validate(s) for s in sweep.skipped or []],
        created_at=sweep.created_at,
        finished_at=sweep.finished_at,
        created_by=sweep.created_by,
    )


def last_values(session: Session, job_ids: Any, metric: str) -> dict[str, float | None]:
    """Each job's `metric` at its last recorded step (None: NaN there); jobs without any
    point are left out. `job_ids`: a list or a subquery."""
    last = (
        select(MetricPoint.job_id, func.max(MetricPoint.step).label("step"))
        .where(MetricPoint.job_id.in_(job_ids), MetricPoint.name == metric)
        .group_by(MetricPoint.job_id)
        .subquery()
    )
    rows = session.execute(
        select(MetricPoint.job_id, MetricPoint.value)
        .join(last, (MetricPoint.job_id == last.c.job_id) & (MetricPoint.step == last.c.step))
        .where(MetricPoint.name == metric)
    ).all()
    return {job_id: value for job_id, value in rows}  # noqa: C416 - typed


def _means(session: Session, job_ids: Any, names: Sequence[str]) -> dict[str, float]:
    rows = session.execute(
        select(MetricPoint.job_id, func.avg(MetricPoint.value))
        .where(MetricPoint.job_id.in_(job_ids), MetricPoint.name.in_(names))
        .group_by(MetricPoint.job_id)
    ).all()
    return {job_id: float(mean) for job_id, mean in rows if mean is not None}


def _best(trials: list[TrialOut], mode: str) -> BestTrial | None:
    done = [t for t in trials if t.status == JobStatus.SUCCEEDED and t.value is not None]
    if not done:
        return None
    pick = max if mode == "max" else min
    best = pick(done, key=lambda t: cast(float, t.value))
    return BestTrial(job_id=best.job_id, value=cast(float, best.value), params=best.params)


def cancel(session: Session, sweep_id: str) -> None:
    """Stop a running sweep: no more trials, its queued trials cancelled at once and its
    running ones cooperatively (app.jobs.request_cancel). A cancelled sweep: nothing to do."""
    result = session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.status == SweepStatus.RUNNING)
        .values(status=SweepStatus.CANCELLED)
    )
    session.commit()
    if cast(CursorResult[Any], result).rowcount != 1:
        status = session.scalar(select(Sweep.status).where(Sweep.id == sweep_id))
        if status != SweepStatus.CANCELLED:
            raise SweepConflict(f"sweep {sweep_id} is {status}; only a running one is cancelled")
    # After the status is committed: a trial the controller creates from here on sees it
    # (app.sweep_controller cancels what it made for a sweep no longer running).
    cancel_trials(session, sweep_id)


def cancel_trials(session: Session, sweep_id: str) -> None:
    active = session.scalars(
        select(Job.id).where(Job.sweep_id == sweep_id, Job.status.in_(ACTIVE))
    ).all()
    for job_id in active:
        try:
            jobs.request_cancel(session.connection(), job_id)
            session.commit()
        except jobs.TransitionError:  # finished, or already cancelling
            session.rollback()


def remove(session: Session, settings: Settings, store: ArtifactStore, sweep_id: str) -> None:
    """Delete a finished or cancelled sweep with no active trial: its trial jobs with their
    metrics, samples and checkpoints, and its study."""
    sweep = session.get(Sweep, sweep_id)
    assert sweep is not None
    name = sweep.study_name
    job_ids = session.scalars(select(Job.id).where(Job.sweep_id == sweep_id)).all()
    active = exists().where(Job.sweep_id == Sweep.id, Job.status.in_(ACTIVE))
    # One conditional DELETE: a trial resumed meanwhile keeps the sweep. The jobs (and their
    # rows) go with it: job.sweep_id is ON DELETE CASCADE.
    result = session.execute(
        delete(Sweep).where(
            Sweep.id == sweep_id,
            Sweep.status.in_((SweepStatus.FINISHED, SweepStatus.CANCELLED)),
            ~active,
        )
    )
    session.commit()
    if cast(CursorResult[Any], result).rowcount != 1:
        session.expire_all()
        status = session.scalar(select(Sweep.status).where(Sweep.id == sweep_id))
        raise SweepConflict(
            f"sweep {sweep_id} is {status} or has active trials; cancel it first "
            "(only a finished or cancelled sweep whose trials have ended is deleted)"
        )
    for job_id in job_ids:
        store.delete_job(job_id)  # what DELETE /api/jobs/{id} does after its row is gone
    sweep_study.delete(settings.database_url, name)


def finish_if_done(session: Session, sweep_id: str) -> None:
    """Mark a cancelled sweep settled (finished_at) once none of its trials is active."""
    active = exists().where(Job.sweep_id == Sweep.id, Job.status.in_(ACTIVE))
    session.execute(
        update(Sweep)
        .where(Sweep.id == sweep_id, Sweep.finished_at.is_(None), ~active)
        .values(finished_at=utcnow())
    )
    session.commit()
