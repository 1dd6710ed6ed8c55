"""GET /api/health: the database and the broker, and each worker host's GPUs (a readiness
probe: 503 while either is unreachable). GET /api/health/live: the process answers, asking
nothing else (a liveness probe: a database outage must not get the API restarted)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app import queue
from app.deps import SessionDep, SettingsDep
from app.devices import device_report
from trainer.errors import first_line

router = APIRouter(prefix="/api")


@router.get("/health/live")
async def live() -> dict[str, str]:
    """Liveness: 200 while this process serves requests; touches no database or broker."""
    return {"status": "ok"}


@router.get("/health")
def health(session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """Liveness, database and broker reachability (503 when either does not answer), and
    each worker host's GPUs: `{"host": {"total": 2, "free": 1, "busy": 1}}`."""
    hosts: dict[str, dict[str, int]] = {}
    try:
        session.execute(text("SELECT 1"))
        database = "ok"
        report = device_report(session.connection(), settings)
        hosts = {host: entry.summary() for host, entry in report.items()}
    except Exception as exc:  # noqa: BLE001 - any failure means unreachable
        database = f"unreachable: {first_line(exc)}"
    try:
        queue.ping(settings)
        broker = "ok"
    except Exception as exc:  # noqa: BLE001
        broker = f"unreachable: {first_line(exc)}"
    ok = database == broker == "ok"
    return JSONResponse(
        {
            "status": "ok" if ok else "degraded",
            "database": database,
            "broker": broker,
            "broker_kind": queue.broker_kind(settings.effective_broker_url),
            "devices": hosts,
        },
        status_code=200 if ok else 503,
    )
