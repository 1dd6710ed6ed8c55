"""Claiming a job with the GPUs it needs.

A message only wakes a worker: the database picks the job. The worker claims the first
queued job of the message's queue (the jobs holding as many GPUs as the message's job) in
priority order (app.jobs.next_queued), whichever job the message named; so each queue keeps
one message per queued job. Candidates are tried in order with the conditional claim, the
next one when another worker took it first. One transaction leases the devices
(app.devices) and claims the job, or does neither; when the GPUs are held by other jobs the
worker waits a little, then leaves the queue as it is for another worker.
"""

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
    """Job `job_id` is this worker's now, with these of its GPUs (none: it trains on the
    CPU)."""

    job_id: str
    devices: list[str]


@dataclass(frozen=True)
class Unfit:
    """Job `job_id` is this worker's now, but it cannot run here (it needs more GPUs than the
    worker serves): the runner records it failed with `error`."""

    job_id: str
    error: str


class Missed(StrEnum):
    """No job was claimed: the queue is left as it is."""

    NOT_QUEUED = "skipped"  # no job of the message's queue is queued (a surplus message)
    BUSY = "busy"  # the GPUs its jobs need stayed held by other jobs: still queued, for later
    DEFERRED = "deferred"  # not tried: the worker is on its way out (the Celery task)


ClaimResult = Claim | Unfit | Missed

# Returned when the GPUs a job needs stayed held by other jobs: the job is still queued.
BUSY: Final = Missed.BUSY

# Candidates read at once: more than the workers that may pick at the same moment.
CANDIDATES: Final = 16


def claim_when_free(
    engine: Engine,
    message: str,
    owner: str,
    lease: timedelta,
    node: Node | None,
    shutting_down: threading.Event,
) -> ClaimResult:
    """Claim the first queued job of the queue of job `message` (the id a message carried)
    with its GPUs, waiting up to `node.wait_seconds` for them to come free (checked twice a
    second: several workers may share devices; the first job is picked anew each time)."""
    deadline = time.monotonic() + (node.wait_seconds if node is not None else 0.0)
    collisions = 0
    while True:
        try:
            claim = _claim_first(engine, message, owner, lease, node)
        except IntegrityError:
            # Another worker leased one of these devices at this very moment: look again.
            collisions += 1
            if collisions > 20:
                raise
            continue
        if claim is not Missed.BUSY or time.monotonic() >= deadline or shutting_down.wait(0.5):
            return claim


def _claim_first(
    engine: Engine, message: str, owner: str, lease: timedelta, node: Node | None
) -> ClaimResult:
    """Claim the first queued job of `message`'s queue that no other worker takes first."""
    with engine.connect() as conn:
        gpus = conn.scalar(select(Job.gpus).where(Job.id == message))
    # A message of a deleted job (it ran on another message, then went) still wakes this
    # worker: it takes a job of any queue it serves.
    queues = [gpus] if gpus is not None else _served(node)
    lost: set[str] = set()
    while True:
        with engine.connect() as conn:
            candidates = jobs.next_queued(conn, queues, skip=lost, limit=CANDIDATES)
        if not candidates:
            return Missed.NOT_QUEUED
        for job_id in candidates:
            claim = _claim(engine, job_id, owner, lease, node)
            if claim is not Missed.NOT_QUEUED:
                # BUSY included: every job of a queue needs as many GPUs as this one.
                return claim
            lost.add(job_id)  # another worker took it (or cancelled it) meanwhile


def _served(node: Node | None) -> list[int] | None:
    """The GPU counts of the queues a worker consumes (app.queue.worker_queues)."""
    return None if node is None else list(range(len(node.devices) + 1))


def _claim(
    engine: Engine, job_id: str, owner: str, lease: timedelta, node: Node | None
) -> ClaimResult:
    """One try, one transaction: lease the job's GPUs and claim it, or neither."""
    with engine.connect() as conn, conn.begin() as transaction:
        row = conn.execute(select(Job.status, Job.spec).where(Job.id == job_id)).first()
        if row is None or row.status != JobStatus.QUEUED:
            return Missed.NOT_QUEUED
        now = utcnow()
        claim: Claim | Unfit = Claim(job_id, [])
        if node is not None:
            spec = TrainSpec.model_validate(row.spec)
            need = spec.gpus
            if need > len(node.devices):
                served = ",".join(node.devices) or "none"
                claim = Unfit(
                    job_id,
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
                    return Missed.BUSY
                claim = Claim(job_id, taken or [])  # none free to lend an `auto` job: the CPU
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
