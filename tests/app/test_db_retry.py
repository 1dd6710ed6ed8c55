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
