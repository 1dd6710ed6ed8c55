"""Priorities schedule: whichever job id a message carries, a free worker claims the first
queued job of that message's queue by priority, then submission (worker.claim), on SQLite and
on PostgreSQL."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, delete, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app import jobs
from app.db import make_engine, upgrade
from app.models import Job, utcnow
from app.queue import queue_depth, send
from app.reconcile import reconcile
from app.settings import Settings
from tests.app.conftest import _fresh_postgres
from trainer.spec import TrainSpec
from worker.claim import Claim, Missed, claim_when_free
from worker.node import Node

CPU = Node(id="box:1:test", host="box", devices=(), simulate=True, wait_seconds=0.0)
START = utcnow() - timedelta(hours=1)
_SECONDS = itertools.count()


@pytest.fixture(scope="module")
def _postgres_template() -> Iterator[str]:
    for url in _fresh_postgres():
        upgrade(url)
        yield make_url(url).database or ""


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path) -> Iterator[Engine]:
    if request.param == "sqlite":
        urls: Iterator[str] = iter([f"sqlite:///{tmp_path / 'worker.db'}"])
    else:
        urls = _fresh_postgres(template=request.getfixturevalue("_postgres_template"))
    for url in urls:
        if request.param == "sqlite":
            upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()


def _queue(engine: Engine, *priorities: int, **spec) -> list[str]:
    """Jobs submitted one second apart, in this order, with these priorities."""
    ids = []
    with Session(engine) as session:
        for priority in priorities:
            job = jobs.new_job(TrainSpec(steps=10, **spec), priority=priority)
            job.created_at = START + timedelta(seconds=next(_SECONDS))
            session.add(job)
            session.flush()
            ids.append(job.id)
        session.commit()
    return ids


def _claim(engine: Engine, message: str, node: Node | None = CPU) -> str | Missed:
    claim = claim_when_free(engine, message, "worker-1", jobs.LEASE, node, threading.Event())
    if isinstance(claim, Missed):
        return claim
    assert isinstance(claim, Claim)
    return claim.job_id


def _status(engine: Engine, job_id: str) -> str:
    with engine.connect() as conn:
        return str(conn.scalar(select(Job.status).where(Job.id == job_id)))


def test_a_message_claims_the_highest_priority_job_first_come_within_a_priority(engine):
    low, high, mid, high_later = _queue(engine, 0, 5, 1, 5)
    # Each message carries the first job's id, as the broker delivers them in arrival order.
    assert _claim(engine, low) == high  # not the message's job: the older of the two 5s
    assert _status(engine, high) == "running" and _status(engine, low) == "queued"
    assert _claim(engine, low) == high_later
    assert _claim(engine, low) == mid
    assert _claim(engine, low) == low
    assert _claim(engine, low) is Missed.NOT_QUEUED  # a surplus message: nothing to do


def test_a_job_keeps_its_place_when_its_message_is_sent_again(engine):
    first, second = _queue(engine, 3, 3)
    with engine.begin() as conn:  # the reconciler re-sent the first job's message just now
        conn.execute(update(Job).where(Job.id == first).values(queued_at=utcnow()))
    assert _claim(engine, second) == first


def test_a_raised_priority_is_taken_first_and_only_a_queued_job_changes(engine):
    early, late = _queue(engine, 2, 2)
    with engine.begin() as conn:
        jobs.set_priority(conn, late, 3)
    assert _claim(engine, early) == late
    with engine.begin() as conn, pytest.raises(jobs.TransitionError, match="is running"):
        jobs.set_priority(conn, late, 9)


def test_a_message_for_a_cancelled_or_deleted_job_claims_the_best_queued_one(engine):
    gone, cancelled, low, best = _queue(engine, 9, 9, 0, 4)
    with engine.begin() as conn:
        jobs.request_cancel(conn, cancelled)
        conn.execute(delete(Job).where(Job.id == gone))
    assert _claim(engine, cancelled) == best
    assert _claim(engine, gone) == low  # deleted: a job of a queue the worker serves


def test_a_message_claims_only_jobs_of_its_own_queue(engine):
    (two_gpus,) = _queue(engine, 9, device="cuda", resources={"gpus": 2})
    (cpu,) = _queue(engine, 0, device="cpu")
    worker = Node(id="box:1:test", host="box", devices=("0", "1"), simulate=True)
    assert _claim(engine, cpu, worker) == cpu  # the 2-GPU job waits for a gpu2 message
    assert _status(engine, two_gpus) == "queued"
    assert _claim(engine, two_gpus, worker) == two_gpus


def test_two_workers_picking_at_once_take_different_jobs(engine, monkeypatch):
    first, second, third = _queue(engine, 1, 1, 0)
    real = jobs.next_queued
    both_read = threading.Barrier(2, timeout=20)

    def read_then_wait(*args, **kwargs):
        candidates = real(*args, **kwargs)
        if threading.current_thread().name.startswith("claimer"):
            both_read.wait()  # both hold the same candidates: both go for `first`
        return candidates

    monkeypatch.setattr(jobs, "next_queued", read_then_wait)
    claimed: dict[str, object] = {}

    def claimer(name: str) -> None:
        claimed[name] = claim_when_free(engine, third, name, jobs.LEASE, CPU, threading.Event())

    threads = [threading.Thread(target=claimer, args=(f"claimer-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    taken = sorted(claim.job_id for claim in claimed.values() if isinstance(claim, Claim))
    assert taken == sorted([first, second])  # neither idle, neither the same job
    with engine.connect() as conn:
        owners = {row.id: row.lease_owner for row in conn.execute(select(Job.id, Job.lease_owner))}
    assert {owners[first], owners[second]} == {"claimer-0", "claimer-1"}
    assert owners[third] is None


def test_the_reconciler_sends_only_as_many_messages_as_a_queue_lacks(engine, tmp_path):
    # Any message wakes a worker for the first job of its queue: a queue needs one message
    # per queued job, whichever ids they carry.
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        queue_prefix="priority-",
    )
    ids = _queue(engine, 0, 1, 2)
    with engine.begin() as conn:
        conn.execute(update(Job).values(queued_at=utcnow() - timedelta(hours=1)))
    send(settings, ids[0], "priority-cpu")  # the broker kept one message of three
    assert len(reconcile(engine, settings).resent) == 2
    assert queue_depth(settings)["priority-cpu"] == 3
    assert reconcile(engine, settings).resent == []
