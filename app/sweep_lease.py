"""The lease a sweep controller holds on a sweep while it works on it: sweep.controller_owner
and controller_until, taken and extended with one conditional UPDATE each (portable across
SQLite and PostgreSQL: the row count says who won), so one controller at a time asks a
sweep's study for trials, however many workers run a controller."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, or_, update

from app.models import Sweep, utcnow


def take_lease(engine: Engine, sweep_id: str, owner: str, lease: timedelta) -> bool:
    """Hold the sweep until now + lease unless a controller holds it (portable: one
    conditional UPDATE, whose row count says who won). Not re-entrant: two passes of one
    owner at once (a worker's reconciler and its task thread) are two controllers."""
    now = utcnow()
    free = or_(Sweep.controller_until.is_(None), Sweep.controller_until < now)
    return _set_lease(engine, sweep_id, free, owner, now + lease)


def extend_lease(engine: Engine, sweep_id: str, owner: str, lease: timedelta) -> bool:
    """Hold the sweep longer; False when the lease ran out and another controller took it."""
    held = (Sweep.controller_owner == owner) & Sweep.controller_until.is_not(None)
    return _set_lease(engine, sweep_id, held, owner, utcnow() + lease)


def _set_lease(engine: Engine, sweep_id: str, condition: Any, owner: str, until: Any) -> bool:
    with engine.begin() as conn:
        result = conn.execute(
            update(Sweep)
            .where(Sweep.id == sweep_id, condition)
            .values(controller_owner=owner, controller_until=until)
        )
    return result.rowcount == 1


def release_lease(engine: Engine, sweep_id: str, owner: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            update(Sweep)
            .where(Sweep.id == sweep_id, Sweep.controller_owner == owner)
            .values(controller_until=None)
        )


class LeaseLost(RuntimeError):
    pass
