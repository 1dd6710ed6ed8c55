"""The SQLite default under concurrency: 4 processes x 500 write transactions, each reading
before it writes (as the worker's lease-fenced writes do), finish without "database is
locked" (WAL, a busy timeout, and write transactions that take the lock up front)."""

from __future__ import annotations

import multiprocessing
import traceback

from sqlalchemy import func, insert, select, update

from app.db import make_engine, upgrade
from app.models import Job, MetricPoint

WRITES = 500
PROCESSES = 4


def _writer(url: str, job_id: str, index: int, errors: multiprocessing.Queue) -> None:
    engine = make_engine(url)
    try:
        for step in range(WRITES):
            with engine.begin() as conn:
                conn.scalar(select(Job.step).where(Job.id == job_id))  # read first ...
                conn.execute(  # ... then write: the lock must not need upgrading
                    insert(MetricPoint).values(
                        job_id=job_id, name=f"w{index}", step=step, value=float(step)
                    )
                )
                conn.execute(update(Job).where(Job.id == job_id).values(step=step))
    except Exception:  # noqa: BLE001 - reported to the parent
        errors.put(traceback.format_exc())
    finally:
        engine.dispose()


def test_four_processes_writing_500_times_each_never_hit_a_lock_error(tmp_path):
    url = f"sqlite:///{tmp_path / 'busy.db'}"
    upgrade(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(insert(Job).values(id="j" * 32, status="running", steps=1, spec={}))
    context = multiprocessing.get_context("spawn")
    errors = context.Queue()
    workers = [
        context.Process(target=_writer, args=(url, "j" * 32, i, errors)) for i in range(PROCESSES)
    ]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=300)
    problems = []
    while not errors.empty():
        problems.append(errors.get())
    assert not problems, problems[0]
    assert all(p.exitcode == 0 for p in workers)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(MetricPoint)) == WRITES * PROCESSES
    engine.dispose()
