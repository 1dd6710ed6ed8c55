"""The FastAPI app (DESIGN.md section 5): `create_app` includes every area's router from
app.routes, the dashboard (app.web), the app-wide token check (app.auth) and the browser
guard (app.hostguard), and shapes validation errors as `{field, message, loc, msg, type}`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from sqlalchemy.exc import DataError, DBAPIError
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import web
from app.auth import authorize
from app.db import ReadPool, is_transient, make_engine, make_read_pool
from app.hostguard import BrowserGuard, HostPolicy
from app.http_metrics import HttpMetrics, RecordHttpMetrics
from app.routes import artifacts, datasets, events, health, jobs, metrics, monitoring, specs
from app.routes import auth as auth_routes
from app.routes import retention as retention_routes
from app.routes import sweeps as sweep_routes
from app.routes.dataset_preview import router as dataset_preview_router
from app.settings import Settings, get_settings
from app.stores import make_store
from app.tokens import parse_env_tokens, tokens_exist
from trainer.errors import first_line
from trainer.spec import describe_error


def _field_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Each error with `field` (dotted path in the body) and a one-line `message`."""
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if err["type"] == "json_invalid" or loc == ["body"]:
            # The body as a whole: not JSON, or JSON of the wrong kind (an array, say).
            reason = str(err.get("ctx", {}).get("error", "")) or err["msg"]
            message = (
                f"body: not valid JSON ({reason})"
                if err["type"] == "json_invalid"
                else (f"body: {err['msg']}")
            )
            out.append(
                {
                    "field": "body",
                    "message": message,
                    "msg": err["msg"],
                    "loc": err["loc"],
                    "type": err["type"],
                }
            )
            continue
        if loc and loc[0] in ("body", "query", "path"):
            loc = loc[1:]
        # Errors inside the spec are described as `ganforge train` describes them.
        scope = loc[:1] if loc[:1] == ["spec"] else []
        field, reason = describe_error({**err, "loc": loc[len(scope) :]})
        field = ".".join(scope + ([field] if field else []))
        out.append(
            {
                "field": field,
                "message": f"{field}: {reason}" if field else reason,
                "msg": err["msg"],
                "loc": err["loc"],
                "type": err["type"],
            }
        )
    return out


async def _unstorable(request: Request, exc: Exception) -> JSONResponse:
    # E.g. a NUL byte in a path id: PostgreSQL refuses it before any row is looked at.
    return JSONResponse(
        {"detail": "request: holds a value the database cannot store (a NUL byte?)"},
        status_code=422,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"detail": _field_errors(exc)}, status_code=422)


class RetryReadOnDisconnect:
    """ASGI middleware: a GET or HEAD that failed because its database connection was lost or
    could not be made (`app.db.is_transient`: a restarted PostgreSQL; SQLAlchemy then drops
    the whole pool, app.db.ReadPool sweeps its own) runs once more on a fresh connection
    before anything was sent. A write that hit it is a 503 (it did not commit:
    the connection was gone before its transaction ended), never a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except (DBAPIError, psycopg.OperationalError) as exc:
            if started or not is_transient(exc):
                raise
            if scope["method"] in ("GET", "HEAD"):
                await self.app(scope, _replay_empty_body(receive), send)
                return
            detail = f"database: the connection was lost ({first_line(exc)}); send it again"
            await JSONResponse({"detail": detail}, status_code=503)(scope, receive, send)


def _replay_empty_body(receive: Receive) -> Receive:
    """`receive` for a second run of a bodiless request: its (empty) body once more."""
    replayed = False

    async def again() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return await receive()

    return again


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    pool: ReadPool | None = app.state.read_pool
    if pool is not None:  # its connections belong to this event loop
        await pool.open()
    yield
    if pool is not None:
        await pool.close()


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """The API on the settings' database (migrations must have run: `ganforge db upgrade`)."""
    settings = settings or get_settings()
    engine = engine or make_engine(settings.database_url, pre_ping=False)
    # Every route passes app.auth.authorize: writes and downloads need a token once one exists.
    app = FastAPI(
        title="ganforge", version="0.1.0", dependencies=[Depends(authorize)], lifespan=_lifespan
    )
    app.state.settings = settings
    app.state.env_tokens = parse_env_tokens(settings.api_tokens)
    app.state.sessions = sessionmaker(engine, expire_on_commit=False)
    # Plain reads without BEGIN/ROLLBACK round trips; on PostgreSQL also psycopg's asyncio pool.
    app.state.read_engine = engine.execution_options(isolation_level="AUTOCOMMIT")
    app.state.read_pool = make_read_pool(engine)
    app.state.store = make_store(settings)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DataError, _unstorable)
    app.add_exception_handler(psycopg.DataError, _unstorable)  # app.db.ReadPool's reads
    for module in (jobs, health, metrics, artifacts, datasets, events, monitoring, specs):
        app.include_router(module.router)
    app.include_router(auth_routes.router)
    app.include_router(sweep_routes.router)
    app.include_router(retention_routes.router)
    app.include_router(dataset_preview_router)
    web.mount(app)
    app.add_middleware(RetryReadOnDisconnect)
    app.add_middleware(
        BrowserGuard,
        policy=HostPolicy.parse(settings.allowed_hosts),
        tokens_on=_tokens_on(app.state.sessions, app.state.env_tokens),
    )
    # Outermost: the requests the guard refuses are counted too.
    app.state.http_metrics = HttpMetrics()
    app.add_middleware(RecordHttpMetrics, metrics=app.state.http_metrics, routes=app.router.routes)
    return app


def _tokens_on(
    factory: sessionmaker[Session], env: list[tuple[str, str]]
) -> Callable[[], Awaitable[bool]]:
    """Whether API tokens exist; once they do they always will (a revoked token keeps its
    row), so a yes is remembered."""
    known = bool(env)

    def ask() -> bool:
        with factory() as session:
            return tokens_exist(session, env)

    async def tokens_on() -> bool:
        nonlocal known
        known = known or await run_in_threadpool(ask)
        return known

    return tokens_on
