"""A job's retention policy applied by the worker itself (worker.attempt sets the sinks'
after-checkpoint hook, worker.runner makes a last pass when the job ends): a short real
training job, run in-process by `run_job`, ends with only the policy's checkpoints, rows and
files agreeing, on a folder store and on the `db` store in the same SQLite database."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, update

from app import reconcile as reconcile_module
from app import retention
from app.db import make_engine, upgrade
from app.models import ArtifactTrash, Checkpoint, Job, MetricPoint, utcnow
from app.reconcile import reconcile
from app.settings import get_settings
from app.store import ArtifactStore, FileStore
from app.stores import open_store
from trainer.spec import TrainSpec
from worker.runner import run_job

STEPS = 60
POLICY = {"keep_last": 1, "keep_best": 2, "best_metric": "loss/d", "mode": "min"}


@pytest.fixture
def engine(tmp_path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'worker.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["file", "db"])
def store(request: pytest.FixtureRequest, engine: Engine, tmp_path) -> Iterator[ArtifactStore]:
    if request.param == "file":
        yield FileStore(tmp_path / "artifacts")
    else:
        opened = open_store("db", database_url=str(engine.url), cache=tmp_path / "cache")
        yield opened
        opened.close()


@pytest.fixture(autouse=True)
def no_grace(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The worker reads its settings from the environment: files go with their rows."""
    monkeypatch.setenv("GANFORGE_DELETE_GRACE_SECONDS", "0")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _queued(engine: Engine, job_id: str, **spec: Any) -> TrainSpec:
    valid = TrainSpec.model_validate(
        {
            "steps": STEPS,
            "batch_size": 32,
            "device": "cpu",
            "model": {"latent_dim": 8, "width": 32, "depth": 2},
            "every": {"metrics": 10, "samples": 0, "checkpoint": 10, "eval": 0},
            **spec,
        }
    )
    with engine.begin() as conn:
        conn.execute(
            insert(Job).values(
                id=job_id, steps=STEPS, spec=valid.model_dump(mode="json"), status="queued"
            )
        )
    return valid


def _rows(engine: Engine, job_id: str) -> list[int]:
    with engine.connect() as conn:
        query = select(Checkpoint.step).where(Checkpoint.job_id == job_id)
        return list(conn.scalars(query.order_by(Checkpoint.step)))


def _expected(engine: Engine, job_id: str) -> list[int]:
    """What the policy keeps of every checkpoint the job wrote (10, 20, ..., 60), from the
    stored loss/d points, computed here without the worker's plan."""
    with engine.connect() as conn:
        points = dict(
            conn.execute(
                select(MetricPoint.step, MetricPoint.value).where(
                    MetricPoint.job_id == job_id, MetricPoint.name == "loss/d"
                )
            ).all()
        )
    written = range(10, STEPS + 1, 10)
    best = sorted((s for s in written if points.get(s) is not None), key=lambda s: points[s])
    return sorted({STEPS} | set(best[:2]))


def _files(store: ArtifactStore, job_id: str) -> set[str]:
    return {path for path, _ in store.list(ArtifactStore.checkpoint_dir(job_id))}


def _paths(job_id: str, steps: list[int]) -> set[str]:
    folder = ArtifactStore.checkpoint_dir(job_id)
    return {f"{folder}/step_{s:06d}.{ext}" for s in steps for ext in ("safetensors", "json")}


def test_a_running_job_keeps_only_what_its_policy_says(engine, store, monkeypatch):
    _queued(engine, "kept", retention=POLICY)
    passes: list[tuple[int, list[int]]] = []
    real = retention.apply

    def watched(engine_: Engine, store_: ArtifactStore, job_id: str, settings, **kw):  # type: ignore[no-untyped-def]
        plan = real(engine_, store_, job_id, settings, **kw)
        with engine_.connect() as conn:
            status = conn.scalar(select(Job.status).where(Job.id == job_id))
        passes.append((len(_rows(engine_, job_id)), [status]))
        return plan

    monkeypatch.setattr(retention, "apply", watched)
    assert run_job("kept", engine=engine, store=store) == "succeeded"
    # A pass after each of the 6 checkpoints while running, and one when the job ended.
    assert [status for _, (status,) in passes] == ["running"] * 6 + ["succeeded"]
    assert max(count for count, _ in passes) <= 1 + 2 + 1  # never more than the policy's
    kept = _rows(engine, "kept")
    assert kept == _expected(engine, "kept") and len(kept) < 6
    assert _files(store, "kept") == _paths("kept", kept)  # rows and files agree
    with engine.connect() as conn:
        assert conn.scalar(select(ArtifactTrash.path)) is None  # grace 0: collected


def test_without_a_policy_every_checkpoint_stays(engine, store):
    _queued(engine, "all")
    assert run_job("all", engine=engine, store=store) == "succeeded"
    every = list(range(10, STEPS + 1, 10))
    assert _rows(engine, "all") == every
    assert _files(store, "all") == _paths("all", every)


def test_the_settings_defaults_apply_and_a_cancelled_job_keeps_its_newest(
    engine, store, monkeypatch
):
    monkeypatch.setenv("GANFORGE_KEEP_LAST", "1")
    get_settings.cache_clear()
    _queued(engine, "cut")
    real = retention.apply

    def cancel_at_30(engine_: Engine, store_: ArtifactStore, job_id: str, settings, **kw):  # type: ignore[no-untyped-def]
        plan = real(engine_, store_, job_id, settings, **kw)
        if _rows(engine_, job_id) == [30]:
            from sqlalchemy import update

            with engine_.begin() as conn:
                conn.execute(update(Job).where(Job.id == job_id).values(status="cancelling"))
            time.sleep(1.5)  # the heartbeat (every 0.5 s) sees the cancel
        return plan

    monkeypatch.setattr(retention, "apply", cancel_at_30)
    assert run_job("cut", engine=engine, store=store) == "cancelled"
    (newest,) = _rows(engine, "cut")
    assert newest >= 30  # the last checkpoint of the cancelled run: it can resume from it
    assert _files(store, "cut") == _paths("cut", [newest])


def test_an_error_in_retention_never_fails_the_job(engine, store, monkeypatch, caplog):
    _queued(engine, "safe", retention=POLICY)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the trash is on fire")

    monkeypatch.setattr(retention, "apply", broken)
    with caplog.at_level(logging.ERROR, logger="ganforge.retention"):
        assert run_job("safe", engine=engine, store=store) == "succeeded"
    assert "job safe: the retention pass failed" in caplog.text
    assert "the trash is on fire" in caplog.text
    assert _rows(engine, "safe") == list(range(10, STEPS + 1, 10))  # nothing deleted


def _due(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.scalar(select(Job.retention_due_at).where(Job.id == job_id))


def _down(*args: Any, **kwargs: Any) -> None:
    raise RuntimeError("the database went away")


def _run_while_retention_is_down(engine, store, monkeypatch, *job_ids: str) -> None:  # type: ignore[no-untyped-def]
    """Queue and run the jobs (one after the other) with every retention pass failing."""
    real = retention.apply
    monkeypatch.setattr(retention, "apply", _down)
    for job_id in job_ids:
        _queued(engine, job_id, retention=POLICY)
        assert run_job(job_id, engine=engine, store=store) == "succeeded"
    monkeypatch.setattr(retention, "apply", real)


def test_a_pass_that_failed_at_the_jobs_end_is_finished_by_the_reconciler(
    engine, store, monkeypatch
):
    """A database or store outage as the job ends leaves its checkpoints over the policy;
    the reconciler applies the policy then, once, and forgets the job."""
    _run_while_retention_is_down(engine, store, monkeypatch, "late")
    real = retention.apply
    _queued(engine, "fine", retention=POLICY)
    assert run_job("fine", engine=engine, store=store) == "succeeded"
    every = list(range(10, STEPS + 1, 10))
    assert _rows(engine, "late") == every and _due(engine, "late") is not None
    assert _due(engine, "fine") is None  # its passes succeeded: nothing left to do

    settings = get_settings()
    monkeypatch.setattr(retention, "apply", _down)  # the outage is not over yet
    failing = reconcile(engine, settings, store)
    assert failing.retained == [] and _due(engine, "late") is not None
    monkeypatch.setattr(retention, "apply", real)

    done = reconcile(engine, settings, store)
    assert done.retained == ["late"]
    kept = _rows(engine, "late")
    assert kept == _expected(engine, "late") and len(kept) < len(every)
    assert _files(store, "late") == _paths("late", kept)
    assert _due(engine, "late") is None
    assert reconcile(engine, settings, store).retained == []  # once


def test_a_job_whose_pass_always_fails_does_not_block_the_others(engine, store, monkeypatch):
    _run_while_retention_is_down(engine, store, monkeypatch, "stuck", "next")
    real = retention.apply
    assert _due(engine, "stuck") < _due(engine, "next")  # "stuck" is first in line

    def stuck_fails(engine_: Engine, store_: ArtifactStore, job_id: str, settings, **kw):  # type: ignore[no-untyped-def]
        if job_id == "stuck":
            raise RuntimeError("this job's rows are broken")
        return real(engine_, store_, job_id, settings, **kw)

    monkeypatch.setattr(retention, "apply", stuck_fails)
    monkeypatch.setattr(reconcile_module, "RETAIN_PER_PASS", 1)
    settings = get_settings()
    assert reconcile(engine, settings, store).retained == []  # "stuck" failed: to the back
    assert reconcile(engine, settings, store).retained == ["next"]
    assert _due(engine, "next") is None and _due(engine, "stuck") is not None
    assert _rows(engine, "next") == _expected(engine, "next")


def test_a_checkpoint_recorded_during_a_pass_keeps_the_pass_due(engine, store, monkeypatch):
    """apply clears only the mark it read: a checkpoint recorded meanwhile (a resumed job
    on another worker) leaves the job due for the next pass."""
    _queued(engine, "busy", retention=POLICY)
    assert run_job("busy", engine=engine, store=store) == "succeeded"
    assert _due(engine, "busy") is None
    settings = get_settings()
    first, second = utcnow() - timedelta(seconds=5), utcnow()
    with engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == "busy").values(retention_due_at=first))
    real_plan = retention.plan

    def meanwhile(session: Any, job: Job, settings_: Any) -> Any:
        with engine.begin() as conn:  # another worker records a checkpoint now
            conn.execute(update(Job).where(Job.id == "busy").values(retention_due_at=second))
        return real_plan(session, job, settings_)

    monkeypatch.setattr(retention, "plan", meanwhile)
    retention.apply(engine, store, "busy", settings)
    assert _due(engine, "busy") == second
    monkeypatch.setattr(retention, "plan", real_plan)
    retention.apply(engine, store, "busy", settings)
    assert _due(engine, "busy") is None
