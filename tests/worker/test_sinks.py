"""The worker's sinks over a database connection that dies mid-write (a PostgreSQL restart)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Connection, Engine, insert, select, text

from app.db import make_engine, upgrade
from app.models import Job, MetricPoint
from tests.app.conftest import _fresh_postgres
from worker import sinks
from worker.sinks import DatabaseMetrics


@pytest.fixture
def engine() -> Iterator[Engine]:
    for url in _fresh_postgres():
        upgrade(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()


def test_a_metric_flush_cut_off_mid_transaction_is_retried_whole(engine, monkeypatch):
    with engine.begin() as conn:
        conn.execute(
            insert(Job).values(id="j", steps=10, spec={}, status="running", lease_owner="w")
        )
    real_insert = sinks.insert_points
    attempts = 0

    def insert_then_lose_the_connection(conn: Connection, job_id: str, points) -> None:
        nonlocal attempts
        attempts += 1
        real_insert(conn, job_id, points)  # COPY into the open transaction
        if attempts == 1:  # the server ends this session before the commit
            conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    monkeypatch.setattr(sinks, "insert_points", insert_then_lose_the_connection)
    metrics = DatabaseMetrics(engine, "j", "w", max_delay=1e9)
    for step in range(1, 11):
        metrics.write(step, {"loss/d": step / 10, "loss/g": -step / 10})
    metrics.flush()

    assert attempts == 2 and metrics.buffer == [] and metrics.written == 20
    with engine.connect() as conn:
        rows = conn.execute(
            select(MetricPoint.name, MetricPoint.step).order_by(MetricPoint.name, MetricPoint.step)
        ).all()
    assert rows == [(name, step) for name in ("loss/d", "loss/g") for step in range(1, 11)]
