"""Claiming a job with the GPUs it needs: one transaction leases the devices (app.devices)
and claims the job, or does neither; a job whose devices other jobs hold waits a little, then
is left queued for another worker."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Final

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from app import devices, jobs
from app.models import Job, JobStatus, utcnow
from trainer.spec import TrainSpec
from worker.node import Node


@dataclass(frozen=True)
class Claim:
    """The job is this worker's now, with these of its GPUs (none: it trains on the CPU)."""

    devices: list[str]


@dataclass(frozen=True)
class Unfit:
    """The job is this worker's now, but it cannot run here (it needs more GPUs than the
    worker serves): the runner records it failed with `error`."""

    error: str


class Missed(StrEnum):
    """The job was not claimed: it is left as it is."""

    NOT_QUEUED = "skipped"  # not queued (a second delivery of the same id, a cancel)
    BUSY = "busy"  # the GPUs it needs stayed held by other jobs: still queued, for later
    DEFERRED = "deferred"  # not tried: the worker is on its way out (the Celery task)


ClaimResult = Claim | Unfit | Missed

# Returned when the GPUs a job needs stayed held by other jobs: the job is still queued.
BUSY: Final = Missed.BUSY


def claim_when_free(
    engine: Engine,
    job_id: str,
    owner: str,
    lease: timedelta,
    node: Node | None,
    shutting_down: threading.Event,
) -> ClaimResult:
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
        if claim is not Missed.BUSY or time.monotonic() >= deadline or shutting_down.wait(0.5):
            return claim


def _claim(
    engine: Engine, job_id: str, owner: str, lease: timedelta, node: Node | None
) -> ClaimResult:
    """One try, one transaction: lease the job's GPUs and claim it, or neither."""
    with engine.connect() as conn, conn.begin() as transaction:
        row = conn.execute(select(Job.status, Job.spec).where(Job.id == job_id)).first()
        if row is None or row.status != JobStatus.QUEUED:
            return Missed.NOT_QUEUED
        now = utcnow()
        claim: Claim | Unfit = Claim([])
        if node is not None:
            spec = TrainSpec.model_validate(row.spec)
            need = spec.gpus
            if need > len(node.devices):
                served = ",".join(node.devices) or "none"
                claim = Unfit(
                    f"resources.gpus: the job needs {need} GPU(s); worker {node.id} serves "
                    f"{len(node.devices)} (--gpus {served})"
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
                    return Missed.BUSY
                claim = Claim(taken or [])  # none free to lend an `auto` job: the CPU
        worker = node.id if node is not None else None
        # Started now, with the devices leased (not at `now`): the run's recorded interval
        # lies within the time it held them.
        held = claim.devices if isinstance(claim, Claim) else []
        if not jobs.claim(conn, job_id, owner, lease, worker=worker, devices=held):
            transaction.rollback()
            return Missed.NOT_QUEUED
    return claim


def _lendable(spec: TrainSpec, node: Node) -> int:
    """GPUs a `device: auto` job with no resources.gpus gets when that many are free."""
    if spec.device != "auto" or spec.resources.gpus is not None:
        return 0
    world = spec.distributed.world_size
    return world if world <= len(node.devices) else 0
