"""The read under GET /api/jobs/{id}, three ways (not a test): CPU per query in-process.

    python bench/readpath.py [--queries 3000]

On a fresh PostgreSQL database (admin URL from GANFORGE_TEST_POSTGRES_URL; dropped after),
migrated, with one tagged job: the route's own statement (app.routes.jobs._ONE_JOB) run
`--queries` times, after 100 warm-up runs, through an SQLAlchemy sync engine (AUTOCOMMIT),
an SQLAlchemy asyncio engine (AUTOCOMMIT) and app.db.ReadPool (psycopg's asyncio pool, what
the route uses). Prints CPU ms (process time) and wall ms per query for each. Client and
server share the machine, so wall time includes PostgreSQL's own work; CPU is this process's.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy.ext.asyncio import create_async_engine  # noqa: E402

from app.db import make_engine, make_read_pool  # noqa: E402
from app.models import Job, JobTag  # noqa: E402
from app.routes.jobs import _ONE_JOB, _ONE_JOB_SQL  # noqa: E402
from tests.app.conftest import _fresh_postgres  # noqa: E402


def measure(name: str, run: Callable[[], object], queries: int) -> None:
    for _ in range(100):
        run()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(queries):
        run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{name}: {1000 * cpu / queries:.3f} ms CPU, {1000 * wall / queries:.3f} ms wall per query"
    )


async def measure_async(name: str, run: Callable[[], Awaitable[object]], queries: int) -> None:
    for _ in range(100):
        await run()
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(queries):
        await run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(
        f"{name}: {1000 * cpu / queries:.3f} ms CPU, {1000 * wall / queries:.3f} ms wall per query"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--queries", type=int, default=3000)
    queries = parser.parse_args().queries
    databases = _fresh_postgres()
    url = next(databases)
    try:
        env = {"GANFORGE_DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
        subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
        )
        engine = make_engine(url, pre_ping=False)
        with engine.begin() as conn:
            conn.execute(
                Job.__table__.insert(), {"id": "j1", "steps": 5, "spec": {}, "warnings": []}
            )
            conn.execute(JobTag.__table__.insert(), [{"job_id": "j1", "tag": t} for t in "ab"])
        params = {"job_id": "j1"}
        sync = engine.execution_options(isolation_level="AUTOCOMMIT")

        def sync_read() -> object:
            with sync.connect() as conn:
                return conn.execute(_ONE_JOB, params).mappings().all()

        measure("SQLAlchemy sync engine", sync_read, queries)
        engine.dispose()
        asyncio.run(_async_reads(url, params, queries))
    finally:
        for _ in databases:  # drops the database
            pass


async def _async_reads(url: str, params: dict[str, str], queries: int) -> None:
    async_engine = create_async_engine(url, isolation_level="AUTOCOMMIT")

    async def async_read() -> object:
        async with async_engine.connect() as conn:
            return (await conn.execute(_ONE_JOB, params)).mappings().all()

    await measure_async("SQLAlchemy asyncio engine", async_read, queries)
    await async_engine.dispose()
    pool = make_read_pool(make_engine(url, pre_ping=False))
    assert pool is not None
    await pool.open()
    await measure_async("app.db.ReadPool", lambda: pool.fetch(_ONE_JOB_SQL, params), queries)
    await pool.close()


if __name__ == "__main__":
    main()
