"""Engine creation and migrations (Alembic, config under [tool.alembic] in pyproject.toml)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import psycopg
from alembic import command
from alembic.config import Config
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

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


class ReadPool:
    """PostgreSQL reads for the API's hot path (GET /api/jobs/{id}) straight on psycopg's
    asyncio connections: the round trip waits on the event loop instead of blocking it, the
    statement is prepared server-side after a few runs, and no SQLAlchemy result layer runs
    (bench/readpath.py: about half the CPU per query of an SQLAlchemy asyncio engine).
    AUTOCOMMIT, UTC session zone, no check per checkout.

    A lost connection (a restarted server) fails the statement with psycopg's
    OperationalError (`is_transient`); the pool is then swept of every other dead connection,
    so the API's one retry of a read (app.api.RetryReadOnDisconnect) gets a live one. Opened
    by the app's lifespan (or the first read); its connections belong to that event loop."""

    def __init__(self, conninfo: str) -> None:
        self._pool = AsyncConnectionPool(
            conninfo,
            kwargs={"autocommit": True, "row_factory": dict_row, "options": "-c TimeZone=UTC"},
            min_size=1,
            max_size=POOL_SIZE,
            max_lifetime=POOL_RECYCLE_SECONDS,
            timeout=10,
            open=False,
        )

    async def open(self) -> None:
        await self._pool.open()

    async def close(self) -> None:
        await self._pool.close()

    async def fetch(self, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        """The rows of one statement (pyformat parameters), as dicts."""
        if self._pool.closed:  # an app run without its lifespan; open() takes a lock
            await self._pool.open()
        try:
            async with self._pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return cast(list[dict[str, Any]], await cursor.fetchall())  # dict_row
        except psycopg.OperationalError:
            await self._pool.check()  # drop the other connections the restart killed
            raise


def make_read_pool(engine: Engine) -> ReadPool | None:
    """A ReadPool on `engine`'s database when it is PostgreSQL through psycopg; None for
    SQLite, where a local file read is shorter than a thread hop."""
    url = engine.url
    if url.get_backend_name() != "postgresql" or url.get_driver_name() != "psycopg":
        return None
    return ReadPool(url.set(drivername="postgresql").render_as_string(hide_password=False))


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


# Our Alembic revision table. Not Alembic's default `alembic_version`: Optuna's RDB storage
# (sweeps' studies, in the same database) keeps its own schema's revision in that table.
# migrations/env.py moves a database's revision from the old table once.
VERSION_TABLE = "ganforge_alembic_version"


def our_tables_only(name: str | None, type_: str, parent_names: object) -> bool:
    """Alembic's `include_name`: compare and migrate only our tables (Optuna's share the
    database)."""
    if type_ == "table":
        from app.models import Base

        return name in Base.metadata.tables
    return True


def alembic_config(url: str) -> Config:
    config = Config(toml_file=str(ROOT / "pyproject.toml"))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Run the migrations up to `revision` on the database at `url`."""
    command.upgrade(alembic_config(url), revision)
