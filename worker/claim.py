"""Claiming a job with the GPUs it needs: one transaction leases the devices (app.devices)
and claims the job, or does neither; a job whose devices other jobs hold waits a little, then
is left queued for another worker."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Final, Literal

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from app import devices, jobs
from app.models import Job, utcnow
from trainer.spec import TrainSpec
from worker.node import Node

# Returned when the GPUs a job needs stayed held by other jobs: the job is still queued.
BUSY: Final = "busy"


@dataclass(frozen=True)
class Claim:
    devices: list[str]
    error: str | None = None  # the job cannot run on this worker (it has too few GPUs)


def claim_when_free(
    engine: Engine,
    job_id: str,
    owner: str,
    lease: timedelta,
    node: Node | None,
    shutting_down: threading.Event,
) -> Claim | Literal["busy"] | None:
    """Claim the job with its GPUs, waiting up to `node.wait_seconds` for them to come free
    (checked twice a second: several workers may share devices)."""
    deadline = time.monotonic() + (node.wait_seconds if node is not None else 0.0)
    collisions = 0
    while True:
        try:
            claim = _claim(engine, job_id, owner, lease, node)
        except IntegrityError:
            # Another worker leased one of these devices at this very moment: look again.
            collisions += 1
            if collisions > 20:
                raise
            continue
        if claim != BUSY or time.monotonic() >= deadline or shutting_down.wait(0.5):
            return claim


def _claim(
    engine: Engine, job_id: str, owner: str, lease: timedelta, node: Node | None
) -> Claim | Literal["busy"] | None:
    """One try, one transaction: lease the job's GPUs and claim it, or neither."""
    with engine.connect() as conn, conn.begin() as transaction:
        row = conn.execute(select(Job.status, Job.spec).where(Job.id == job_id)).first()
        if row is None or row.status != "queued":
            return None
        now = utcnow()
        claim = Claim([])
        if node is not None:
            spec = TrainSpec.model_validate(row.spec)
            need = spec.gpus
            if need > len(node.devices):
                served = ",".join(node.devices) or "none"
                claim = Claim(
                    [],
                    f"resources.gpus: the job needs {need} GPU(s); worker {node.id} serves "
                    f"{len(node.devices)} (--gpus {served})",
                )
            else:
                taken = devices.take(
                    conn,
                    host=node.host,
                    devices=node.devices,
                    count=need or _lendable(spec, node),
                    job_id=job_id,
                    owner=owner,
                    expires_at=now + lease,
                    now=now,
                )
                if taken is None and need:
                    transaction.rollback()
                    return BUSY
                claim = Claim(taken or [])  # none free to lend an `auto` job: the CPU
        worker = node.id if node is not None else None
        # Started now, with the devices leased (not at `now`): the run's recorded interval
        # lies within the time it held them.
        claimed = jobs.claim(conn, job_id, owner, lease, worker=worker, devices=claim.devices)
        if not claimed:
            transaction.rollback()
            return None
    return claim


def _lendable(spec: TrainSpec, node: Node) -> int:
    """GPUs a `device: auto` job with no resources.gpus gets when that many are free."""
    if spec.device != "auto" or spec.resources.gpus is not None:
        return 0
    world = spec.distributed.world_size
    return world if world <= len(node.devices) else 0
