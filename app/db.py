"""Engine creation and migrations (Alembic, config under [tool.alembic] in pyproject.toml)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from trainer.errors import first_line

log = logging.getLogger("ganforge.db")
T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
# About the requests the API serves at once, so connections are reused rather than opened and
# closed under load (the default 5 + 10 overflow churned one connection per ~10 requests).
POOL_SIZE = 20
POOL_RECYCLE_SECONDS = 1800


def make_engine(url: str, *, pre_ping: bool = True) -> Engine:
    """An engine for `url`; SQLite gets WAL mode, foreign keys and a busy timeout.

    PostgreSQL: with `pre_ping` (workers, the CLI) each checkout tests its connection, so a
    restarted server costs a reconnect. The API goes without (a SELECT 1 round trip per
    request): a restart is noticed by the first statement that fails, which invalidates the
    whole pool, and the API runs a read that hit it once more (app.api.RetryReadOnDisconnect).
    Recycling bounds a connection's age either way, so a server's or a proxy's idle timeout
    leaves no dead connection in the pool."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(
            url,
            pool_pre_ping=pre_ping,
            pool_recycle=POOL_RECYCLE_SECONDS,
            pool_size=POOL_SIZE,
            max_overflow=POOL_SIZE,
        )
    pool: dict[str, int] = {}
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        pool = {"pool_size": POOL_SIZE, "max_overflow": POOL_SIZE}  # not for :memory:
    engine = create_engine(url, connect_args={"timeout": 30}, **pool)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine


def make_read_engine(engine: Engine) -> AsyncEngine | None:
    """For PostgreSQL (psycopg), an asyncio engine on the same database for the API's hot
    reads (GET /api/jobs/{id}): its round trip to the server then waits on the event loop
    instead of blocking it, so concurrent requests overlap. AUTOCOMMIT, no pre-ping, like
    the API's engine. None for SQLite: a local file read is shorter than a thread hop."""
    url = engine.url
    if url.get_backend_name() != "postgresql" or url.get_driver_name() != "psycopg":
        return None
    return create_async_engine(
        url,
        isolation_level="AUTOCOMMIT",
        pool_recycle=POOL_RECYCLE_SECONDS,
        pool_size=POOL_SIZE,
        max_overflow=POOL_SIZE,
    )


def is_transient(exc: BaseException) -> bool:
    """A database error that a later attempt can get past: the connection was lost (the
    server restarted) or could not be made (the server is down, shutting down or starting
    up). Raw psycopg errors count too: app.metricstore writes through the driver's COPY."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return isinstance(cause, psycopg.OperationalError)


def retry_transient(attempt: Callable[[], T], *, within: float, what: str) -> T:
    """`attempt()`, tried again after each transient database error (`is_transient`) with
    pauses growing from 0.1 s to 2 s, for up to `within` seconds; then that error, or at once
    any other error, is raised.

    `attempt` must be one whole transaction (`with engine.begin() ...`): a failed attempt
    rolled back, so running it again writes everything once. (A commit whose answer was
    lost may have gone through; the writes retried here are idempotent, so that is fine.)
    """
    deadline = time.monotonic() + within
    pause = 0.1
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not is_transient(exc) or time.monotonic() + pause > deadline:
                raise
            log.warning("%s: database unreachable, retrying: %s", what, first_line(exc))
            time.sleep(pause)
            pause = min(2 * pause, 2.0)


def alembic_config(url: str) -> Config:
    config = Config(toml_file=str(ROOT / "pyproject.toml"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Run the migrations up to `revision` on the database at `url`."""
    command.upgrade(alembic_config(url), revision)
