"""Checkpoint retention (DESIGN.md section 10): which checkpoints a job keeps, and deleting
the others safely.

The policy is the spec's `retention` (trainer.spec.Retention), each field left out taken from
the settings (GANFORGE_KEEP_LAST, GANFORGE_KEEP_BEST). `keep_last` and `keep_best` both 0
keep every checkpoint (the default, and the behaviour before retention existed). Otherwise a
checkpoint is kept when it is

- the newest of the job: always, whatever the policy, so the job can resume from it;
- one of the last `keep_last`;
- one of the best `keep_best` by `best_metric` (`mode` min: the lowest values);
- pinned (POST /api/jobs/{id}/checkpoints/{step}/pin);

and the plan says why (every reason that holds), or "outside the policy".

Deleting never leaves a listed checkpoint without its file, nor takes a file from under a
reader that found its row just before:

1. `apply` deletes the checkpoint rows and, in the same transaction, notes their files
   (tensors and sidecar) in `artifact_trash` with `delete_after` = now + the grace period
   (GANFORGE_DELETE_GRACE_SECONDS). From that commit on, no one finds the checkpoint; a
   download or `generate` that read the row before it has the grace period to finish.
2. `collect_trash` deletes the files of notes whose time has passed, each under its note's
   lock: the note is deleted in a transaction that removes the file before it commits, so a
   crash (or a store error) in between leaves the note, and the next pass does it again.
   A note whose path a row lists again (a checkpoint written anew at the same step) is dropped
   and its file left alone; a writer removes the notes of the paths it is about to write
   (`untrash`) before writing them, and that waits for a collection holding the note.

The worker applies its job's policy after each checkpoint it records and when the job ends;
every worker's reconciler pass collects the trash, and so does the API after a delete.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from sqlalchemy import Connection, Engine, delete, func, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from app.models import (
    ArtifactChunk,
    ArtifactFile,
    ArtifactTrash,
    Checkpoint,
    Dataset,
    Job,
    MetricPoint,
    Sample,
    utcnow,
)
from app.settings import Settings, get_settings
from app.store import ArtifactStore
from app.store_db import DatabaseStore
from trainer.spec import Retention

log = logging.getLogger("ganforge.retention")

Mode = Literal["min", "max"]
# At most this many trash notes per collection (the next pass takes the rest).
COLLECT_BATCH = 1000


class RetentionError(ValueError):
    """A change the retention rules refuse (the API answers 409)."""


# ---- the policy and the plan -------------------------------------------------------------


@dataclass(frozen=True)
class Policy:
    """The policy in force for a job: the spec's fields, the settings' defaults for those left
    out (`source` says which: "spec" or the setting's name)."""

    keep_last: int
    keep_best: int
    best_metric: str
    mode: Mode
    source: dict[str, str]

    @property
    def keeps_everything(self) -> bool:
        return self.keep_last == 0 and self.keep_best == 0


def policy_of(spec: dict[str, Any], settings: Settings) -> Policy:
    """The policy of a job's stored spec, defaults from `settings`."""
    retention = Retention.model_validate(spec.get("retention") or {})
    source = {
        "keep_last": "spec" if retention.keep_last is not None else "GANFORGE_KEEP_LAST",
        "keep_best": "spec" if retention.keep_best is not None else "GANFORGE_KEEP_BEST",
    }
    return Policy(
        keep_last=settings.keep_last if retention.keep_last is None else retention.keep_last,
        keep_best=settings.keep_best if retention.keep_best is None else retention.keep_best,
        best_metric=retention.best_metric,
        mode=retention.mode,
        source=source,
    )


@dataclass(frozen=True)
class Stored:
    """A checkpoint row as the plan reads it, with its metric value (None: none, or NaN)."""

    step: int
    path: str
    size: int
    sidecar_size: int | None
    pinned: bool
    value: float | None


@dataclass(frozen=True)
class Entry(Stored):
    """One checkpoint in a plan: kept or deleted, and why."""

    keep: bool
    reasons: tuple[str, ...]
    best: bool  # the best by the policy's metric (whether or not keep_best keeps it)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def bytes(self) -> int:
        """Tensors and sidecar (a sidecar of unknown size counts 0)."""
        return self.size + (self.sidecar_size or 0)


@dataclass(frozen=True)
class Plan:
    job_id: str
    policy: Policy
    entries: tuple[Entry, ...]  # by step

    @property
    def deleted(self) -> list[Entry]:
        return [e for e in self.entries if not e.keep]

    @property
    def bytes_kept(self) -> int:
        return sum(e.bytes for e in self.entries if e.keep)

    @property
    def bytes_deleted(self) -> int:
        return sum(e.bytes for e in self.entries if not e.keep)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def ranked(policy: Policy, rows: Sequence[Stored]) -> list[Stored]:
    """The checkpoints with a value, best first by the policy's metric and mode; ties go to
    the newer checkpoint. NaN and missing values never rank."""
    valued = [r for r in rows if _finite(r.value) is not None]
    sign = 1.0 if policy.mode == "min" else -1.0
    return sorted(valued, key=lambda r: (sign * (r.value or 0.0), -r.step))


def decide(policy: Policy, rows: Sequence[Stored]) -> tuple[Entry, ...]:
    """What the policy does with each of a job's checkpoints (any order in, by step out)."""
    rows = sorted(rows, key=lambda r: r.step)
    newest = rows[-1].step if rows else None
    order = ranked(policy, rows)
    best = {r.step for r in order[: policy.keep_best]}
    last = {r.step for r in rows[-policy.keep_last :]} if policy.keep_last else set()
    top = order[0].step if order else None
    entries = []
    for row in rows:
        reasons = []
        if policy.keeps_everything:
            reasons.append("the policy keeps every checkpoint (keep_last and keep_best are 0)")
        if row.step == newest:
            reasons.append("latest: the job resumes from it")
        if row.step in last:
            reasons.append(f"one of the last {policy.keep_last}")
        if row.step in best:
            reasons.append(
                f"one of the best {policy.keep_best} by {policy.best_metric} "
                f"({policy.mode}): {row.value:.6g}"
            )
        if row.pinned:
            reasons.append("pinned")
        keep = bool(reasons)
        entries.append(
            Entry(
                **{**dataclasses.asdict(row), "value": _finite(row.value)},
                keep=keep,
                reasons=tuple(reasons) if keep else ("outside the policy",),
                best=row.step == top,
            )
        )
    return tuple(entries)


def stored(session: Session | Connection, job_id: str, metric: str) -> list[Stored]:
    """The job's checkpoints by step, each with the value of `metric` at the largest metric
    step at or before the checkpoint's step (the value the checkpoint's weights earned:
    evaluation at step S runs on the weights of step S). That value is None when the point
    holds NaN or inf (stored as NULL), or no point comes at or before the checkpoint: it
    does not fall back to an earlier point."""
    value = (
        select(MetricPoint.value)
        .where(
            MetricPoint.job_id == Checkpoint.job_id,
            MetricPoint.name == metric,
            MetricPoint.step <= Checkpoint.step,
        )
        .order_by(MetricPoint.step.desc())
        .limit(1)
        .correlate(Checkpoint)
        .scalar_subquery()
    )
    query = (
        select(
            Checkpoint.step,
            Checkpoint.path,
            Checkpoint.size,
            Checkpoint.sidecar_size,
            Checkpoint.pinned,
            value,
        )
        .where(Checkpoint.job_id == job_id)
        .order_by(Checkpoint.step)
    )
    return [Stored(*row) for row in session.execute(query)]


def plan(session: Session, job: Job, settings: Settings) -> Plan:
    """What the job's policy keeps and deletes now, each checkpoint with its reasons.

    A checkpoint's metric value is the metric's value at the largest metric step <= the
    checkpoint's step; NaN and missing values never count as best (see `stored`)."""
    policy = policy_of(job.spec, settings)
    return Plan(job.id, policy, decide(policy, stored(session, job.id, policy.best_metric)))


# ---- deleting -----------------------------------------------------------------------------


def _upsert_trash(conn: Connection, paths: Sequence[str], delete_after: datetime) -> None:
    if not paths:
        return
    dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(ArtifactTrash).values(
        [{"path": p, "delete_after": delete_after} for p in dict.fromkeys(paths)]
    )
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[ArtifactTrash.path],
            set_={"delete_after": statement.excluded.delete_after},
        )
    )


def trash_checkpoints(
    conn: Connection,
    job_id: str,
    steps: Sequence[int],
    delete_after: datetime,
    *,
    keep_newest: bool = True,
) -> list[int]:
    """In the caller's transaction: delete the job's checkpoint rows at `steps` and note
    their files (tensors and sidecar) for `collect_trash` after `delete_after`. A pinned
    checkpoint is never deleted, nor (with `keep_newest`) the newest, whatever happened
    since the caller looked. The steps whose rows went."""
    if not steps:
        return []
    query = delete(Checkpoint).where(
        Checkpoint.job_id == job_id,
        Checkpoint.step.in_(list(steps)),
        Checkpoint.pinned.is_not(true()),
    )
    if keep_newest:
        newest = select(func.max(Checkpoint.step)).where(Checkpoint.job_id == job_id)
        query = query.where(Checkpoint.step < newest.scalar_subquery())
    gone = conn.execute(query.returning(Checkpoint.step, Checkpoint.path)).all()
    paths = [p for _, path in gone for p in (path, ArtifactStore.sidecar_path(path))]
    _upsert_trash(conn, paths, delete_after)
    return sorted(step for step, _ in gone)


def apply(
    engine: Engine,
    store: ArtifactStore,
    job_id: str,
    settings: Settings,
    *,
    now: datetime | None = None,
) -> Plan | None:
    """Delete what the job's policy does not keep (through the trash: see the module's
    docstring), then collect the trash that is due. The plan applied; None for no such job."""
    now = now or utcnow()
    with Session(engine) as session:
        job = session.get(Job, job_id)
        if job is None:
            return None
        due = job.retention_due_at
        planned = plan(session, job, settings)
    doomed = [e.step for e in planned.deleted]
    if doomed:
        delete_after = now + timedelta(seconds=settings.delete_grace_seconds)
        with engine.begin() as conn:
            gone = trash_checkpoints(conn, job_id, doomed, delete_after)
        log.info("job %s: retention deleted the checkpoints of steps %s", job_id, gone)
    collect_trash(engine, store, now)
    if due is not None:
        # Done with the checkpoints up to `due`; one recorded since (a resumed job) keeps the
        # pass due.
        with engine.begin() as conn:
            conn.execute(
                update(Job)
                .where(Job.id == job_id, Job.retention_due_at == due)
                .values(retention_due_at=None)
            )
    return planned


def apply_quietly(
    engine: Engine, store: ArtifactStore, job_id: str, settings: Settings | None = None
) -> None:
    """`apply` for the worker: an error is logged, never raised (retention must not fail a
    job; the next checkpoint, the job's end or, once the job has finished, the reconciler
    tries again: the job's `retention_due_at` stays set until a pass succeeds)."""
    try:
        apply(engine, store, job_id, settings or get_settings())
    except Exception:  # noqa: BLE001 - logged; the training goes on
        log.exception("job %s: the retention pass failed", job_id)


def untrash(engine: Engine, paths: Sequence[str]) -> None:
    """Forget the notes of files about to be written again (before writing them): a
    collection holding a note finishes first, one after finds no note."""
    with engine.begin() as conn:
        conn.execute(delete(ArtifactTrash).where(ArtifactTrash.path.in_(list(paths))))


def _listed(conn: Connection, path: str) -> bool:
    """Whether a checkpoint or a sample row lists the file (a checkpoint's sidecar too)."""
    if path.endswith(".json"):
        tensors = str(PurePosixPath(path).with_suffix(".safetensors"))
    else:
        tensors = path
    ckpt = select(Checkpoint.id).where(or_(Checkpoint.path == path, Checkpoint.path == tensors))
    sample = select(Sample.id).where(Sample.path == path)
    return bool(conn.scalar(select(or_(ckpt.exists(), sample.exists()))))


def _shares_sqlite(conn: Connection, store: ArtifactStore) -> bool:
    """A `db` store on the SQLite file of `conn`: its own connection could not write while
    this one holds the write lock, so its files are deleted through `conn`."""
    if not isinstance(store, DatabaseStore) or conn.dialect.name != "sqlite":
        return False
    mine, its = conn.engine.url.database, make_url(store.database_url).database
    return bool(mine and its) and Path(mine or "").resolve() == Path(its or "").resolve()


def _delete_file(conn: Connection, store: ArtifactStore, path: str) -> None:
    if _shares_sqlite(conn, store):
        statement = delete(ArtifactFile).where(ArtifactFile.path == path)
        blobs = conn.execute(statement.returning(ArtifactFile.blob)).scalars().all()
        if blobs:
            conn.execute(delete(ArtifactChunk).where(ArtifactChunk.blob.in_(blobs)))
    else:
        store.delete(path)


def _collect_one(engine: Engine, store: ArtifactStore, path: str, now: datetime) -> bool:
    """Delete one due note's file under the note's lock; whether the file went."""
    with engine.begin() as conn:
        taken = conn.execute(
            delete(ArtifactTrash).where(
                ArtifactTrash.path == path, ArtifactTrash.delete_after <= now
            )
        )
        if taken.rowcount != 1 or _listed(conn, path):
            return False  # collected meanwhile, written anew, or listed again: left alone
        _delete_file(conn, store, path)  # an error rolls back: the note stays for next time
    return True


def collect_trash(engine: Engine, store: ArtifactStore, now: datetime | None = None) -> list[str]:
    """Delete the files whose notes' `delete_after` has passed, then the notes (one by one,
    each in its own transaction: see the module's docstring). The paths deleted. A file
    the store fails to delete keeps its note (logged) and the pass goes on."""
    now = now or utcnow()
    with engine.connect() as conn:
        due = conn.scalars(
            select(ArtifactTrash.path)
            .where(ArtifactTrash.delete_after <= now)
            .order_by(ArtifactTrash.delete_after, ArtifactTrash.path)
            .limit(COLLECT_BATCH)
        ).all()
    removed = []
    for path in due:
        try:
            if _collect_one(engine, store, path, now):
                removed.append(path)
        except Exception as exc:  # noqa: BLE001 - the note stays; the next pass tries again
            log.warning("trash: cannot delete %s yet: %s", path, exc)
    return removed


def collect_quietly(engine: Engine, store: ArtifactStore) -> None:
    """`collect_trash` after an API delete: a failure is logged (the reconciler's pass
    collects it), never the request's error."""
    try:
        collect_trash(engine, store)
    except Exception:  # noqa: BLE001 - logged; the next pass tries again
        log.exception("collecting the artifact trash failed")


# ---- pins and single deletes (the API) -----------------------------------------------------


def set_pinned(conn: Connection, job_id: str, step: int, pinned: bool) -> bool:
    """Pin (keep forever) or unpin a checkpoint; False when the job has none at `step`."""
    result = conn.execute(
        update(Checkpoint)
        .where(Checkpoint.job_id == job_id, Checkpoint.step == step)
        .values(pinned=pinned)
    )
    return result.rowcount == 1


def delete_checkpoint(
    engine: Engine, job_id: str, step: int, settings: Settings, *, active: bool
) -> None:
    """Remove one checkpoint through the trash. RetentionError when it is pinned, or the
    newest of an unfinished (`active`) job; LookupError when there is none at `step`."""
    delete_after = utcnow() + timedelta(seconds=settings.delete_grace_seconds)
    with engine.begin() as conn:
        row = conn.execute(
            select(Checkpoint.pinned).where(Checkpoint.job_id == job_id, Checkpoint.step == step)
        ).first()
        newest = conn.scalar(select(func.max(Checkpoint.step)).where(Checkpoint.job_id == job_id))
        if row is None:
            raise LookupError(f"job {job_id} has no checkpoint at step {step}")
        if row.pinned:
            raise RetentionError(
                f"checkpoint step {step} of job {job_id} is pinned; unpin it first "
                f"(DELETE /api/jobs/{job_id}/checkpoints/{step}/pin)"
            )
        if active and step == newest:
            raise RetentionError(
                f"checkpoint step {step} is the newest of job {job_id}, which is not finished: "
                "the job resumes from it (cancel the job first)"
            )
        if not trash_checkpoints(conn, job_id, [step], delete_after, keep_newest=active):
            raise LookupError(f"job {job_id} has no checkpoint at step {step} (deleted meanwhile)")


def stored_bytes(conn: Connection) -> dict[str, int]:
    """Bytes in the store by kind (checkpoints with their sidecars, samples, datasets), from
    the rows' sizes (unknown sizes count 0)."""
    total = func.coalesce(func.sum(Checkpoint.size + func.coalesce(Checkpoint.sidecar_size, 0)), 0)
    return {
        "checkpoint": int(conn.scalar(select(total)) or 0),
        "sample": int(conn.scalar(select(func.coalesce(func.sum(Sample.size), 0))) or 0),
        "dataset": int(conn.scalar(select(func.coalesce(func.sum(Dataset.size), 0))) or 0),
    }
