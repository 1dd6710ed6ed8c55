"""app.logs: the JSON line format, the job id of the records of a job, and the reconciler's
lifecycle line for a job whose worker died."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import insert

from app import logs, reconcile
from app.db import make_engine, upgrade
from app.models import Job, utcnow
from app.settings import Settings, get_settings


@pytest.fixture
def log_format(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("GANFORGE_LOG_FORMAT", "json")
    get_settings.cache_clear()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    if logs._ours is not None:
        root.removeHandler(logs._ours)
        logs._ours = None
    root.handlers[:], root.level = handlers, level
    logging.captureWarnings(False)
    get_settings.cache_clear()


def test_json_lines_carry_time_level_logger_message_and_the_job_id(log_format):
    out = io.StringIO()
    assert logs.setup_logging(stream=out) == "json"
    log = logging.getLogger("ganforge.test")
    log.info("before")
    with logs.job_context("j1"):
        log.warning("during %s", "x", extra={"event": "claimed"})
    log.info("after")
    first, during, after = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["message"] == "before" and "job_id" not in first
    assert during["level"] == "WARNING" and during["logger"] == "ganforge.test"
    assert during["message"] == "during x" and during["job_id"] == "j1"
    assert during["event"] == "claimed" and during["time"].endswith("+00:00")
    assert "job_id" not in after


def test_the_text_format_is_celerys(monkeypatch):
    monkeypatch.delenv("GANFORGE_LOG_FORMAT", raising=False)
    assert Settings().log_format == "text"
    said: list[str] = []
    logs.to_log(said.append, "ganforge.test")("error: plain")
    assert said == ["error: plain"]


def test_the_reconciler_logs_a_requeue_once_with_the_job_id(tmp_path, monkeypatch, caplog):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(
            insert(Job).values(
                id="gone",
                steps=10,
                spec={},
                status="running",
                lease_owner="w",
                attempt=1,
                max_attempts=3,
                lease_expires_at=utcnow() - timedelta(seconds=5),
            )
        )
    monkeypatch.setattr(reconcile.queue, "send", lambda *_args: None)
    monkeypatch.setattr(reconcile.queue, "queue_depth", lambda _s, queues: dict.fromkeys(queues, 0))
    with caplog.at_level(logging.INFO, logger="ganforge.reconcile"):
        reconcile.reconcile(engine, Settings())
    events = [r for r in caplog.records if getattr(r, "event", None)]
    assert [(r.event, r.job_id) for r in events] == [("requeued", "gone")]  # type: ignore[attr-defined]
    assert "lease expired" in events[0].reason  # type: ignore[attr-defined]
