"""app.db.retry_transient: which errors it retries, and for how long."""

from __future__ import annotations

import time

import psycopg
import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from app.db import is_transient, retry_transient


def _refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, psycopg.OperationalError("connection refused"))


def test_transient_errors_are_lost_or_refused_connections():
    assert is_transient(_refused())
    assert is_transient(psycopg.errors.AdminShutdown("terminating connection"))
    assert not is_transient(IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("dup")))
    assert not is_transient(ValueError("not a database error"))


def test_a_transient_error_is_retried_until_the_attempt_succeeds():
    calls = []

    def attempt() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise _refused()
        return "done"

    assert retry_transient(attempt, within=10, what="test") == "done"
    assert len(calls) == 3
    assert calls[2] - calls[1] > calls[1] - calls[0] >= 0.1  # the pause grows


def test_it_gives_up_after_within_seconds_and_at_once_on_other_errors():
    started = time.monotonic()
    with pytest.raises(OperationalError):
        retry_transient(lambda: (_ for _ in ()).throw(_refused()), within=0.5, what="test")
    assert 0.25 < time.monotonic() - started < 1.5

    calls = 0

    def broken() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("a bug, not an outage")

    with pytest.raises(ValueError):
        retry_transient(broken, within=10, what="test")
    assert calls == 1


def _drop_connections(url: str) -> int:
    """What a PostgreSQL restart does to the API's pool: every connection to `url`'s
    database is closed by the server."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from tests.services import POSTGRES_URL

    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            return len(
                conn.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": make_url(url).database},
                ).all()
            )
    finally:
        admin.dispose()


def test_the_api_serves_a_read_on_a_dropped_connection_and_refuses_a_write_with_503(
    postgres_url: str, tmp_path
) -> None:
    """The API's pool has no pre-ping: a read that meets a connection the server closed
    runs once more on a fresh one; a write that meets one is a 503 that stored nothing."""
    from fastapi.testclient import TestClient

    from app.api import create_app
    from app.db import upgrade
    from app.settings import Settings
    from tests.trainer.factories import tiny_spec

    upgrade(postgres_url)
    settings = Settings(
        database_url=postgres_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_dir=tmp_path / "artifacts",
    )
    app = create_app(settings)  # the engine the API makes for itself: no pre-ping
    with TestClient(app, base_url="http://localhost") as client:
        spec = tiny_spec().model_dump(mode="json")
        job = client.post("/api/jobs", json={"spec": spec}).json()["id"]
        assert client.get(f"/api/jobs/{job}").status_code == 200  # the pool holds connections
        assert _drop_connections(postgres_url) >= 1
        assert client.get(f"/api/jobs/{job}").json()["status"] == "queued"
        assert _drop_connections(postgres_url) >= 1
        assert client.get("/api/jobs").json()["items"][0]["id"] == job
        assert _drop_connections(postgres_url) >= 1
        refused = client.post(f"/api/jobs/{job}/cancel")
        assert refused.status_code == 503, refused.text
        assert refused.json()["detail"].startswith("database: the connection was lost")
        assert client.get(f"/api/jobs/{job}").json()["status"] == "queued"  # nothing changed
        assert client.post(f"/api/jobs/{job}/cancel").json()["status"] == "cancelled"
