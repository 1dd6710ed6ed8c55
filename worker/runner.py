"""Runs one job: woken by a message, claim the first queued job of the message's queue (with
the GPUs it needs; worker.claim), train it with the service's sinks, heartbeat, record the
outcome.

`run_job` is what the Celery task calls; it needs nothing from Celery, so it can also be
driven directly (by a benchmark, say). A worker without GPUs trains in its own process. A
worker with GPUs (`Node.devices`) trains each job in a fresh process (worker.jobprocess) whose
CUDA_VISIBLE_DEVICES lists the job's devices, so the trainer's cuda:0, cuda:1, ... are the
job's and no other's: CUDA reads that variable once per process.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import Engine

from app import devices, jobs, retention
from app.db import is_transient, retry_transient
from app.logs import job_context
from app.models import FINISHED, JobStatus
from app.store import ArtifactStore
from trainer.errors import first_line
from worker.attempt import Outcome, RunState, Stopped, attempt
from worker.claim import Claim, Missed, Unfit, claim_when_free
from worker.jobprocess import run_in_child
from worker.node import Node

log = logging.getLogger("ganforge.worker")

HEARTBEAT_SECONDS = 0.5

# What `run_job` returns: the job's final status, why the attempt stopped short (requeued,
# lost), or why the job was not claimed (skipped, busy).
RunResult = JobStatus | Stopped | Missed


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Heartbeat(threading.Thread):
    """Every HEARTBEAT_SECONDS: extend the lease, publish the step, notice a cancel.

    A beat that fails (the database restarting, say) is only missed: the next one tries
    again, and the lease stays this worker's meanwhile (no one else can take it while the
    database is down; it lasts `lease` past the last beat that went through)."""

    def __init__(self, engine: Engine, job_id: str, owner: str, state: RunState, lease: timedelta):
        super().__init__(name=f"heartbeat-{job_id}", daemon=True)
        self.engine, self.job_id, self.owner, self.state = engine, job_id, owner, state
        self.lease = lease
        self.done = threading.Event()
        self.tag = {"job_id": job_id}  # its records' job id (a thread has its own context)

    def beat(self) -> None:
        with self.engine.begin() as conn:
            status = jobs.heartbeat(conn, self.job_id, self.owner, self.state.step, self.lease)
        if status is None:
            self.state.lost.set()
        elif status == JobStatus.CANCELLING:
            self.state.cancel.set()

    def run(self) -> None:
        failing = False
        while not self.done.wait(HEARTBEAT_SECONDS):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - a missed beat is retried; the lease is 60 s
                if not is_transient(exc):
                    log.exception("heartbeat of job %s failed", self.job_id, extra=self.tag)
                elif not failing:
                    log.warning(
                        "heartbeat of job %s: database unreachable, retrying: %s",
                        self.job_id,
                        first_line(exc),
                        extra=self.tag,
                    )
                failing = True
            else:
                if failing:
                    log.info(
                        "heartbeat of job %s: database reachable again", self.job_id, extra=self.tag
                    )
                failing = False


def run_job(
    message: str,
    *,
    engine: Engine,
    store: ArtifactStore,
    owner: str | None = None,
    shutting_down: threading.Event | None = None,
    lease: timedelta = jobs.LEASE,
    node: Node | None = None,
    claimed: Callable[[str], object] | None = None,
) -> RunResult:
    """Woken by a message carrying job id `message`: claim the first queued job of its queue
    (highest priority, then first submitted: worker.claim), whichever job that is, and run it
    to its end. Returns the final status, `skipped` when no job of that queue is queued (a
    surplus message), `requeued` when the worker shut down, `lost` when its lease went to
    another worker, or `busy` when the GPUs the queue's jobs need stayed held by other jobs for
    `node.wait_seconds` (they stay queued: the caller sends the message again). A job needing
    more GPUs than `node` serves is claimed and failed, saying so. Without a `node`, GPUs are
    not managed. `claimed` is called with the id of the job claimed, when one is."""
    owner = owner or worker_id()
    shutting_down = shutting_down or threading.Event()
    claim = claim_when_free(engine, message, owner, lease, node, shutting_down)
    if claim is Missed.NOT_QUEUED:
        log.info("job %s is not queued; nothing to do (nor is any job of its queue)", message)
        return claim
    if isinstance(claim, Missed):
        log.info("message for job %s: the GPUs its queue needs are held; for later", message)
        return claim
    job_id = claim.job_id
    if claimed is not None:
        claimed(job_id)
    with job_context(job_id):  # every record meanwhile carries the job id
        _log_claimed(claim, owner, message)
        if isinstance(claim, Unfit):
            step, outcome = None, Outcome(JobStatus.FAILED, claim.error)
        else:
            step, outcome = _train_claimed(
                claim,
                engine=engine,
                store=store,
                owner=owner,
                lease=lease,
                node=node,
                shutting_down=shutting_down,
            )
        ending = retry_transient(
            lambda: _record(engine, job_id, owner, step, outcome),
            within=lease.total_seconds(),
            what=f"job {job_id}: finish",
        )
        error = f": {outcome.error}" if outcome.error else ""
        log.info(
            "job %s %s at step %s%s", job_id, ending, step, error, extra=_ended(ending, outcome)
        )
        if ending in FINISHED:  # succeeded, failed, cancelled, pruned: the policy's last pass
            retention.apply_quietly(engine, store, job_id)
        return ending


def _log_claimed(claim: Claim | Unfit, owner: str, message: str) -> None:
    """The lifecycle line of a claim (once per claimed job)."""
    held = claim.devices if isinstance(claim, Claim) else []
    where = f" on devices {','.join(claim.devices)}" if isinstance(claim, Claim) else ""
    log.info(
        "job %s claimed by %s%s (message for job %s)",
        claim.job_id,
        owner,
        where,
        message,
        extra={"event": "claimed", "job_id": claim.job_id, "worker": owner, "devices": held},
    )


def _ended(ending: RunResult, outcome: Outcome) -> dict[str, object]:
    """The lifecycle fields of the line that says how a claimed job's attempt ended."""
    if ending is Stopped.REQUEUED:
        return {"event": "requeued", "reason": "the worker is stopping", "status": "queued"}
    if ending is Stopped.LOST:
        return {"event": "lost", "reason": "its lease went to another worker"}
    if ending == JobStatus.FAILED:
        return {"event": "failed", "status": str(ending), "reason": outcome.error}
    return {"event": "finished", "status": str(ending)}


def _train_claimed(
    claim: Claim,
    *,
    engine: Engine,
    store: ArtifactStore,
    owner: str,
    lease: timedelta,
    node: Node | None,
    shutting_down: threading.Event,
) -> tuple[int | None, Outcome]:
    """Train the job under a heartbeat: in a process of its own on a worker with GPUs, else
    here. The step reached and how it ended."""
    job_id = claim.job_id
    separate = node is not None and bool(node.devices)
    state = RunState.shared() if separate else RunState(stop=shutting_down)
    heart = Heartbeat(engine, job_id, owner, state, lease)
    heart.start()  # at once: building the trainer can take longer than a short lease
    try:
        if node is not None and separate:
            outcome = run_in_child(
                job_id,
                owner=owner,
                lease=lease,
                engine=engine,
                store=store,
                state=state,
                devices=claim.devices,
                simulate=node.simulate,
                shutting_down=shutting_down,
            )
        else:
            simulate = node is not None and node.simulate
            outcome = attempt(engine, store, job_id, owner, lease, state, simulate=simulate)
    finally:
        heart.done.set()
        if heart.is_alive():
            heart.join()
    return state.step, outcome


def _record(
    engine: Engine, job_id: str, owner: str, step: int | None, outcome: Outcome
) -> JobStatus | Stopped:
    """Record how the attempt ended and free the job's GPUs, in one transaction; the job's
    status after it (`requeued` when it went back to the queue, `lost` when not ours)."""
    with engine.begin() as conn:
        devices.release(conn, job_id, owner)
        if outcome.ending is Stopped.REQUEUED:
            requeued = jobs.release(conn, job_id, owner, step)
            return Stopped.REQUEUED if requeued else JobStatus.CANCELLED  # a cancel came
        if outcome.ending is not Stopped.LOST:
            jobs.finish(conn, job_id, owner, outcome.ending, step, outcome.error)
        return outcome.ending
