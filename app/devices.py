"""GPUs in the database: which ones each worker serves, and which job holds which.

A worker started with `--gpus 0,1` registers its devices (`worker_device`) and writes them
again every few seconds while it runs. A job that needs g GPUs takes g of its worker's devices
that no job holds: one `device_lease` row per (host, device), inserted in the transaction that
claims the job, so of two workers listing the same device only one can take it (the primary
key refuses the second, whose claim then rolls back). Heartbeats extend the leases with the
job's lease, the end of the run deletes them, and a lease past its expiry (its worker was
killed; the reconciler requeues the job) is free again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, func, insert, select, update

from app.models import DeviceLease, WorkerDevice, utcnow
from app.settings import Settings


def register(
    conn: Connection, *, worker: str, host: str, devices: Sequence[str], now: datetime
) -> None:
    """Record (again) that `worker` on `host` serves `devices`."""
    conn.execute(delete(WorkerDevice).where(WorkerDevice.worker == worker))
    if devices:
        conn.execute(
            insert(WorkerDevice),
            [
                {"worker": worker, "host": host, "device": d, "position": i, "seen_at": now}
                for i, d in enumerate(devices)
            ],
        )


def unregister(conn: Connection, worker: str) -> None:
    conn.execute(delete(WorkerDevice).where(WorkerDevice.worker == worker))


def forget_stale(conn: Connection, before: datetime) -> None:
    """Drop the registrations of workers not heard from since `before` (killed ones)."""
    conn.execute(delete(WorkerDevice).where(WorkerDevice.seen_at < before))


def take(
    conn: Connection,
    *,
    host: str,
    devices: Sequence[str],
    count: int,
    job_id: str,
    owner: str,
    expires_at: datetime,
    now: datetime,
) -> list[str] | None:
    """Lease `count` of `devices` (in their order) that no job holds to the job; None when
    fewer are free. Call it in the claim's transaction: when another worker takes one of
    them at the same moment, the insert raises IntegrityError and the whole claim is tried
    again."""
    if count == 0:
        return []
    conn.execute(delete(DeviceLease).where(DeviceLease.host == host, DeviceLease.expires_at < now))
    held = set(
        conn.scalars(
            select(DeviceLease.device).where(
                DeviceLease.host == host, DeviceLease.device.in_(list(devices))
            )
        )
    )
    free = [d for d in devices if d not in held]
    if len(free) < count:
        return None
    chosen = free[:count]
    conn.execute(
        insert(DeviceLease),
        [
            {
                "host": host,
                "device": d,
                "job_id": job_id,
                "worker": owner,
                "taken_at": now,
                "expires_at": expires_at,
            }
            for d in chosen
        ],
    )
    return chosen


def free_count(conn: Connection, *, host: str, devices: Sequence[str], now: datetime) -> int:
    """How many of `devices` no job holds now."""
    held = conn.scalars(
        select(DeviceLease.device).where(
            DeviceLease.host == host,
            DeviceLease.device.in_(list(devices)),
            DeviceLease.expires_at >= now,
        )
    ).all()
    return len(set(devices) - set(held))


def extend(conn: Connection, job_id: str, owner: str, expires_at: datetime) -> None:
    conn.execute(
        update(DeviceLease)
        .where(DeviceLease.job_id == job_id, DeviceLease.worker == owner)
        .values(expires_at=expires_at)
    )


def release(conn: Connection, job_id: str, owner: str | None = None) -> None:
    """Free the devices the job holds (only those of `owner`'s run, when given)."""
    query = delete(DeviceLease).where(DeviceLease.job_id == job_id)
    if owner is not None:
        query = query.where(DeviceLease.worker == owner)
    conn.execute(query)


@dataclass
class HostDevices:
    """One host's GPUs: those its live workers serve (or a running job still holds)."""

    devices: list[str] = field(default_factory=list)
    busy: dict[str, str] = field(default_factory=dict)  # device -> the job that holds it

    @property
    def free(self) -> list[str]:
        return [d for d in self.devices if d not in self.busy]

    def summary(self) -> dict[str, int]:
        return {"total": len(self.devices), "free": len(self.free), "busy": len(self.busy)}


def report(conn: Connection, *, now: datetime, live_since: datetime) -> dict[str, HostDevices]:
    """Every host's devices and who holds them: registrations seen since `live_since`, and
    leases not expired at `now`."""
    hosts: dict[str, HostDevices] = {}
    served = conn.execute(
        select(WorkerDevice.host, WorkerDevice.device)
        .where(WorkerDevice.seen_at >= live_since)
        .distinct()
    ).all()
    held = conn.execute(
        select(DeviceLease.host, DeviceLease.device, DeviceLease.job_id).where(
            DeviceLease.expires_at >= now
        )
    ).all()
    for host, device in served:
        hosts.setdefault(host, HostDevices()).devices.append(device)
    for host, device, job_id in held:
        entry = hosts.setdefault(host, HostDevices())
        entry.busy[device] = job_id
        if device not in entry.devices:
            entry.devices.append(device)
    for entry in hosts.values():
        entry.devices.sort(key=device_order)
    return dict(sorted(hosts.items()))


def device_report(conn: Connection, settings: Settings) -> dict[str, HostDevices]:
    """`report` now: a worker not heard from for a lease is gone, as its jobs would be."""
    now = utcnow()
    return report(conn, now=now, live_since=now - timedelta(seconds=settings.lease_seconds))


def largest_worker(conn: Connection, *, live_since: datetime) -> int:
    """The most devices one live worker serves (which `gpuN` queues are consumed)."""
    counts = conn.scalars(
        select(func.count())
        .select_from(WorkerDevice)
        .where(WorkerDevice.seen_at >= live_since)
        .group_by(WorkerDevice.worker)
    ).all()
    return max(counts, default=0)


def device_order(device: str) -> tuple[int, int, str]:
    """0, 1, 2, ..., 10 in numeric order; names (GPU-UUIDs) after them."""
    return (0, int(device), "") if device.isdigit() else (1, 0, device)
