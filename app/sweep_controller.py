"""The sweep controller: every worker runs a pass after each reconcile pass (and after a
trial job of its own ends); tests call `run_controller_pass` directly.

A pass takes each running sweep (and each cancelled one not yet settled) under a lease, a
conditional UPDATE of sweep.controller_owner/controller_until, so that one controller at a
time works on a sweep, then:

1. repairs: a study trial still RUNNING with no job (a controller stopped between ask() and
   the job's insert) gets its job now, from the trial's parameters;
2. feeds each trial job's objective (its metric points, by step) to its trial and stops a
   running trial the pruner rejects (app.jobs.request_prune: it ends `pruned`);
3. tells the study how each ended trial job ended, once: succeeded -> its objective at its
   last evaluation, pruned -> PRUNED, failed or cancelled -> FAIL;
4. creates trials while fewer than budget.concurrent are active and fewer than
   budget.trials exist: ask() the study, build and check the spec, insert the job (unique
   per sweep and trial number: a second insert fails, and that is "already created"),
   commit, enqueue. A spec only invalid as a combination is told FAIL and listed in
   sweep.skipped;
5. finishes the sweep once it can create no more trials and none is active.

Nothing here raises for one sweep's trouble: it is logged and the next pass tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import optuna
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app import jobs, queue, sweep_space, sweep_study
from app.db import is_transient
from app.models import ACTIVE, FINISHED, Job, JobStatus, MetricPoint, Sweep, SweepStatus, utcnow
from app.settings import Settings
from app.speccheck import service_problems
from app.sweep_lease import LeaseLost, extend_lease, release_lease, take_lease
from app.sweeps import last_values
from trainer.errors import first_line
from trainer.spec import SpecError, TrainSpec

log = logging.getLogger("ganforge.sweeps")

CONTROLLER_LEASE = timedelta(seconds=60)
# Asks per pass, beyond the free slots, that may end up skipped (bounded work per pass).
SKIPS_PER_PASS = 20


def skip_limit(trials: int) -> int:
    """Skipped combinations after which a sweep creates no more trials (its space is mostly
    invalid combinations): the sweep finishes with what it ran."""
    return min(1000, max(20, 2 * trials))


@dataclass
class PassReport:
    created: list[str] = field(default_factory=list)  # job ids
    pruned: list[str] = field(default_factory=list)
    told: list[tuple[str, int, str]] = field(default_factory=list)  # (sweep, number, state)
    skipped: list[tuple[str, int]] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)  # sweep ids
    busy: list[str] = field(default_factory=list)  # sweeps another controller held


def run_controller_pass(
    engine: Engine,
    settings: Settings,
    owner: str,
    *,
    sweep_ids: Iterable[str] | None = None,
    lease: timedelta = CONTROLLER_LEASE,
) -> PassReport:
    """One pass over the sweeps that need one (or over `sweep_ids`)."""
    report = PassReport()
    with engine.connect() as conn:
        query = select(Sweep.id).where(
            or_(
                Sweep.status == SweepStatus.RUNNING,
                (Sweep.status == SweepStatus.CANCELLED) & Sweep.finished_at.is_(None),
            )
        )
        if sweep_ids is not None:
            query = query.where(Sweep.id.in_(list(sweep_ids)))
        due = conn.execute(query.order_by(Sweep.created_at)).scalars().all()
    for sweep_id in due:
        if not take_lease(engine, sweep_id, owner, lease):
            report.busy.append(sweep_id)
            continue
        try:
            _Controller(engine, settings, sweep_id, owner, lease, report).run()
        except LeaseLost as exc:
            log.warning("%s", exc)
        except Exception as exc:  # noqa: BLE001 - one sweep's trouble stops no other
            if is_transient(exc):
                log.warning("sweep %s: database unreachable: %s", sweep_id, first_line(exc))
            else:
                log.exception("sweep %s: controller pass failed", sweep_id)
        finally:
            release_lease(engine, sweep_id, owner)
    return report


class _Controller:
    """One pass over one sweep, holding its lease."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        sweep_id: str,
        owner: str,
        lease: timedelta,
        report: PassReport,
    ) -> None:
        self.engine, self.settings, self.owner, self.lease = engine, settings, owner, lease
        self.report = report
        with Session(engine, expire_on_commit=False) as session:
            sweep = session.get(Sweep, sweep_id)
        assert sweep is not None  # deleted only when finished or cancelled and settled
        self.sweep = sweep
        self.space = sweep_study.space_of(sweep)
        self.study: Study = sweep_study.load(settings.database_url, sweep)

    def run(self) -> None:
        self.repair()
        self.feed_and_tell()
        if self.sweep.status == SweepStatus.RUNNING:
            self.create()
        self.settle()

    # -- state ----------------------------------------------------------------------------

    def trials(self) -> dict[int, FrozenTrial]:
        return {t.number: t for t in self.study.get_trials(deepcopy=False)}

    def trial_jobs(self) -> dict[int, tuple[str, str]]:
        """trial number -> (job id, status) of the sweep's jobs."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(Job.trial_number, Job.id, Job.status).where(Job.sweep_id == self.sweep.id)
            ).all()
        return {n: (job_id, status) for n, job_id, status in rows if n is not None}

    def extend(self) -> None:
        if not extend_lease(self.engine, self.sweep.id, self.owner, self.lease):
            raise LeaseLost(f"sweep {self.sweep.id}: another controller holds it")

    # -- (1) repair -----------------------------------------------------------------------

    def repair(self) -> None:
        made = self.trial_jobs()
        for number, trial in self.trials().items():
            if trial.state != TrialState.RUNNING or number in made:
                continue
            if self.sweep.status != SweepStatus.RUNNING:
                self._tell(trial, TrialState.FAIL, None, "the sweep was cancelled")
                continue
            # Its parameters as asked (those missing when the ask itself was cut short are
            # suggested now: a grid trial keeps its grid point).
            live = optuna.trial.Trial(self.study, trial._trial_id)
            dists = sweep_space.distributions(self.space)
            params = {path: live._suggest(path, dist) for path, dist in dists.items()}
            self.make_job(number, trial._trial_id, params)

    # -- (2, 3) feed and tell -------------------------------------------------------------

    def feed_and_tell(self) -> None:
        trials = self.trials()
        for number, (job_id, status) in self.trial_jobs().items():
            trial = trials.get(number)
            if trial is None or trial.state != TrialState.RUNNING:
                continue  # told already (or not this study's: nothing to do)
            self.feed(job_id, status, trial)
            if status in FINISHED:
                self.tell_outcome(job_id, status, trial)

    def feed(self, job_id: str, status: str, trial: FrozenTrial) -> None:
        """Report the objective's new points; stop a running trial the pruner rejects."""
        metric = self.sweep.objective["metric"]
        with self.engine.connect() as conn:
            points = conn.execute(
                select(MetricPoint.step, MetricPoint.value)
                .where(MetricPoint.job_id == job_id, MetricPoint.name == metric)
                .order_by(MetricPoint.step)
            ).all()
        reported = trial.intermediate_values
        new = [(s, v) for s, v in points if s not in reported and v is not None]
        if not new:
            return
        live = optuna.trial.Trial(self.study, trial._trial_id)
        for step, value in new:
            live.report(value, step)
        if status != JobStatus.RUNNING or self.sweep.pruner.get("kind", "none") == "none":
            return
        if live.should_prune():
            step = new[-1][0]
            rule = f"{self.sweep.pruner['kind']} pruner at step {step}"
            with self.engine.begin() as conn:
                if jobs.request_prune(conn, job_id, step, rule):
                    self.report.pruned.append(job_id)

    def tell_outcome(self, job_id: str, status: str, trial: FrozenTrial) -> None:
        if status == JobStatus.PRUNED:
            self._tell(trial, TrialState.PRUNED, None, None)
        elif status == JobStatus.SUCCEEDED:
            metric = self.sweep.objective["metric"]
            with Session(self.engine) as session:
                values = sweep_value(session, job_id, metric)
            if values is None:
                reason = f"the job logged no finite {metric}"
                self._tell(trial, TrialState.FAIL, None, reason)
            else:
                self._tell(trial, TrialState.COMPLETE, values, None)
        else:
            self._tell(trial, TrialState.FAIL, None, f"the job {status}")

    def _tell(
        self, trial: FrozenTrial, state: TrialState, value: float | None, reason: str | None
    ) -> None:
        if reason is not None:
            self.study._storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        if state == TrialState.COMPLETE:
            self.study.tell(trial.number, value, skip_if_finished=True)
        else:
            self.study.tell(trial.number, state=state, skip_if_finished=True)
        self.report.told.append((self.sweep.id, trial.number, state.name))

    # -- (4) create -----------------------------------------------------------------------

    def create(self) -> None:
        budget = self.sweep.budget
        dists = sweep_space.distributions(self.space)
        grid = sweep_space.grid_size(self.space) if self.sweep.method == "grid" else None
        skips = 0
        while skips <= SKIPS_PER_PASS and not self.exhausted():
            made = self.trial_jobs()
            active = sum(1 for _, status in made.values() if status in ACTIVE)
            if active >= budget["concurrent"] or len(made) >= budget["trials"]:
                return
            if grid is not None and len(self.study.get_trials(deepcopy=False)) >= grid:
                return
            self.extend()
            trial = self.study.ask(dists)
            if self.make_job(trial.number, trial._trial_id, trial.params) is None:
                skips += 1

    def exhausted(self) -> bool:
        """No trial can be created any more (besides budget and concurrency)."""
        return len(self.sweep.skipped or []) >= skip_limit(self.sweep.budget["trials"])

    def make_job(self, number: int, trial_id: int, params: dict[str, Any]) -> str | None:
        """Create and enqueue the trial's job; None when its spec is invalid (skipped) or it
        exists already."""
        spec = self.checked_spec(number, trial_id, params)
        if spec is None:
            return None
        name = f"{self.sweep.name or 'sweep ' + self.sweep.id[:8]} #{number}"[:200]
        job = jobs.new_job(
            spec,
            name=name,
            priority=self.sweep.priority,
            created_by=self.sweep.created_by,
            tags=[f"sweep:{self.sweep.id}"],
            sweep_id=self.sweep.id,
            trial_number=number,
            trial_params=params,
        )
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(job)
            try:
                session.commit()
            except IntegrityError:
                return None  # already created (or the sweep is gone)
            # A cancel committed before this insert has not seen the job: cancel it here.
            status = session.scalar(select(Sweep.status).where(Sweep.id == self.sweep.id))
            if status != SweepStatus.RUNNING:
                jobs.request_cancel(session.connection(), job.id)
                session.commit()
                return None
        try:
            queue.enqueue(self.settings, job.id, spec)
        except Exception as exc:  # noqa: BLE001 - queued in the table: the reconciler re-sends
            log.warning("sweep %s: cannot queue job %s: %s", self.sweep.id, job.id, exc)
        self.report.created.append(job.id)
        return job.id

    def checked_spec(self, number: int, trial_id: int, params: dict[str, Any]) -> TrainSpec | None:
        try:
            spec = sweep_space.trial_spec(self.sweep.base, params)
            with Session(self.engine) as session:
                found = service_problems(spec, session, self.settings)
            if found:
                raise SpecError([f"{f.removeprefix('spec.')}: {r}" for f, r, _ in found])
            return spec
        except SpecError as exc:
            error = str(exc)
        entry = {"number": number, "params": params, "error": error}
        self.sweep.skipped = [*(self.sweep.skipped or []), entry]
        with self.engine.begin() as conn:
            conn.execute(
                update(Sweep).where(Sweep.id == self.sweep.id).values(skipped=self.sweep.skipped)
            )
        self.study._storage.set_trial_user_attr(trial_id, "reason", f"skipped: {error}")
        self.study.tell(number, state=TrialState.FAIL, skip_if_finished=True)
        self.report.skipped.append((self.sweep.id, number))
        return None

    # -- (5) settle -----------------------------------------------------------------------

    def settle(self) -> None:
        """Finish a running sweep that can create nothing more and has nothing active; mark
        a cancelled one settled once its trials have ended and are told."""
        made = self.trial_jobs()
        if any(status in ACTIVE for _, status in made.values()):
            return
        trials = self.trials()
        if any(t.state == TrialState.RUNNING for t in trials.values()):
            return
        if self.sweep.status == SweepStatus.RUNNING:
            grid = sweep_space.grid_size(self.space) if self.sweep.method == "grid" else None
            done = (
                len(made) >= self.sweep.budget["trials"]
                or (grid is not None and len(trials) >= grid)
                or self.exhausted()
            )
            if not done:
                return
            self.report.finished.append(self.sweep.id)
        with self.engine.begin() as conn:
            conn.execute(
                update(Sweep)
                .where(
                    Sweep.id == self.sweep.id,
                    Sweep.status == self.sweep.status,  # not over a cancel meanwhile
                    Sweep.finished_at.is_(None),
                )
                .values(
                    status=(
                        SweepStatus.FINISHED
                        if self.sweep.status == SweepStatus.RUNNING
                        else self.sweep.status
                    ),
                    finished_at=utcnow(),
                )
            )


def sweep_value(session: Session, job_id: str, metric: str) -> float | None:
    """A trial's objective: `metric` at the job's last evaluation (None: none, or NaN)."""
    return last_values(session, [job_id], metric).get(job_id)
