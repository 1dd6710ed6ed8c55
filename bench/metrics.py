"""Metric storage benchmark (not a test): ingestion rate and the metrics endpoint's latency.

    python bench/metrics.py [--ingest 200000] [--series 1000000] [--alternatives]
                            [--write docs/benchmarks.md]

(a) Points/s of app.metricstore.insert_points from one process, as a worker flushes its
buffer: 10 series logged at every step, batches of 1,000 and 10,000 points, each batch
its own transaction (commit included). (b) Wall time of GET /api/jobs/{id}/metrics
?names=loss/d&max_points=2000 through the app (starlette's TestClient) for one series of
`--series` points (0.1 % of them NaN), median of 5 after one warm-up. Both on a scratch
PostgreSQL database (created, then dropped; admin URL from GANFORGE_BENCH_POSTGRES_URL)
and on a temporary SQLite file, each migrated with app.db.upgrade. `--alternatives` also
times the approaches app.metricstore does not take, on the same series (PostgreSQL:
bucketing in SQL; SQLite: every point iterated into numpy, one correlated statement).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.api import create_app  # noqa: E402
from app.db import make_engine, upgrade  # noqa: E402
from app.downsample import downsample  # noqa: E402
from app.metricstore import _fetch, insert_points, read_series  # noqa: E402
from app.models import Job  # noqa: E402
from app.settings import Settings  # noqa: E402
from bench.report import replace_section  # noqa: E402

NAMES = [
    "loss/d",
    "loss/g",
    "d/real",
    "d/fake",
    "grad_norm/d",
    "grad_norm/g",
    "audit/leak_d",
    "audit/leak_g",
    "perf/steps_per_s",
    "perf/samples_per_s",
]


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards (the tests' own helper)."""
    from tests.app.conftest import _fresh_postgres

    yield from _fresh_postgres()


@contextmanager
def scratch_sqlite() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield f"sqlite:///{folder}/bench.db"


def new_job(engine: Engine) -> str:
    with Session(engine) as session:
        job = Job(status="queued", steps=1, spec={})
        session.add(job)
        session.commit()
        return job.id


def ingest_rate(engine: Engine, total: int, batch: int) -> float:
    """Points/s writing `total` points (10 series, step by step) in `batch`-point commits."""
    job_id = new_job(engine)
    rng = np.random.default_rng(0)
    values = rng.normal(size=total).tolist()
    points = [(NAMES[i % len(NAMES)], i // len(NAMES), v) for i, v in enumerate(values)]
    started = time.perf_counter()
    for i in range(0, total, batch):
        with engine.begin() as conn:
            insert_points(conn, job_id, points[i : i + batch])
    return total / (time.perf_counter() - started)


def long_series(engine: Engine, n: int) -> tuple[str, float]:
    """A job with one `n`-point series `loss/d` (a noisy decay, 0.1 % NaN); seconds taken."""
    job_id = new_job(engine)
    rng = np.random.default_rng(1)
    values = np.exp(-np.arange(n) / n) + 0.1 * rng.normal(size=n)
    values[rng.choice(n, n // 1000, replace=False)] = np.nan
    started = time.perf_counter()
    chunk = 100_000
    for i in range(0, n, chunk):
        with engine.begin() as conn:
            part = values[i : i + chunk].tolist()
            insert_points(conn, job_id, [("loss/d", i + k, v) for k, v in enumerate(part)])
    with engine.connect() as conn:  # fresh planner statistics, as autovacuum would give
        if engine.dialect.name == "postgresql":
            conn.execute(text("ANALYZE metric_point"))
        else:
            conn.execute(text("ANALYZE"))
        conn.commit()
    return job_id, time.perf_counter() - started


def timed(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: caches, the prepared statements, the connection pool
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def timed_together(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median seconds of each of `fns`, run in turn `repeats` times after a warm-up."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, spent in zip(fns, times, strict=True):
            started = time.perf_counter()
            fn()
            spent.append(time.perf_counter() - started)
    return [statistics.median(spent) for spent in times]


def alternatives(engine: Engine, job_id: str, max_points: int) -> dict[str, float]:
    """Seconds (median of 3) of the approaches app.metricstore does not take, for
    comparison: on PostgreSQL bucketing in SQL, on SQLite fetching every point."""
    buckets = (max_points - 2) // 2
    params = {"j": job_id, "n": "loss/d", "b": buckets}
    out: dict[str, float] = {}
    with engine.connect() as conn:
        lo, hi = conn.execute(
            text("SELECT min(step), max(step) FROM metric_point WHERE job_id = :j AND name = :n"),
            params,
        ).one()
        params |= {"lo": lo, "span": hi - lo + 1}
        if engine.dialect.name == "postgresql":
            # one pass: GROUP BY bucket; argmin/argmax via min/max of ARRAY[value, step]
            one_pass = text(
                """SELECT b, min(ARRAY[value, step]) FILTER (WHERE value IS NOT NULL),
                max(ARRAY[value, -step]) FILTER (WHERE value IS NOT NULL),
                min(step) FILTER (WHERE value IS NULL)
                FROM (SELECT (step - :lo)::int8 * :b / :span AS b, step, value
                      FROM metric_point WHERE job_id = :j AND name = :n) s
                GROUP BY b ORDER BY b"""
            )
            out["SQL: GROUP BY bucket, min/max of ARRAY[value, step]"] = timed(
                lambda: conn.execute(one_pass, params).all(), 3
            )
            window = text(
                """WITH s AS (SELECT step, value, (step - :lo)::int8 * :b / :span AS b
                              FROM metric_point WHERE job_id = :j AND name = :n),
                g AS (SELECT b, min(value) AS lo_v, max(value) AS hi_v,
                             min(step) FILTER (WHERE value IS NULL) AS first_null
                      FROM s GROUP BY b)
                SELECT s.step, s.value FROM s JOIN g USING (b)
                WHERE s.value = g.lo_v OR s.value = g.hi_v OR s.step = g.first_null
                ORDER BY s.step"""
            )
            out["SQL: GROUP BY bucket joined back to the points"] = timed(
                lambda: conn.execute(window, params).all(), 3
            )

            def rows() -> None:
                driver = conn.connection.driver_connection
                with driver.cursor(binary=True) as cursor:  # type: ignore[union-attr]
                    cursor.execute(
                        "SELECT step, value FROM metric_point WHERE job_id = %s AND name = %s "
                        "ORDER BY step",
                        (job_id, "loss/d"),
                    )
                    got = cursor.fetchall()
                steps = np.fromiter((s for s, _ in got), np.int64, len(got))
                values = np.fromiter((np.nan if v is None else v for _, v in got), float, len(got))
                downsample(steps, values, max_points)

            out["rows (binary cursor) into numpy, then bucketed there"] = timed(rows, 3)
        else:

            def fetch_all() -> None:
                steps, values = _fetch(conn, job_id, "loss/d", None)
                downsample(steps, values, max_points)

            out["every point iterated into numpy, then bucketed there"] = timed(fetch_all, 3)
            where = (
                "FROM metric_point WHERE job_id = :j AND name = :n AND step >= r.a AND step < r.z"
            )
            correlated = text(
                f"""WITH RECURSIVE k(i) AS (
                    SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i + 1 < :b),
                r(i, a, z) AS (SELECT i, :lo + (i * :span + :b - 1) / :b,
                                     :lo + ((i + 1) * :span + :b - 1) / :b FROM k)
                SELECT i, (SELECT step FROM (SELECT min(value), step {where})),
                          (SELECT step FROM (SELECT max(value), step {where})),
                          (SELECT min(step) {where} AND value IS NULL)
                FROM r"""
            )
            out["one statement, correlated subqueries per bucket (no counts)"] = timed(
                lambda: conn.execute(correlated, params).all(), 3
            )
    return out


def run_backend(label: str, url: str, args: argparse.Namespace) -> dict[str, object]:
    upgrade(url)
    engine = make_engine(url)
    result: dict[str, object] = {"backend": label}
    try:
        for batch in args.batches:
            rate = ingest_rate(engine, args.ingest, batch)
            result[f"ingest {batch}"] = rate
            print(f"{label}: ingest, batches of {batch:,}: {rate:,.0f} points/s", flush=True)
        job_id, seconds = long_series(engine, args.series)
        result["load"] = args.series / seconds
        print(f"{label}: {args.series:,} points in batches of 100,000: {seconds:.1f} s", flush=True)
        with (
            tempfile.TemporaryDirectory() as artifacts,
            TestClient(
                create_app(Settings(database_url=url, artifact_dir=Path(artifacts)), engine),
                base_url="http://localhost",
            ) as client,
        ):
            path = f"/api/jobs/{job_id}/metrics"
            query = {"names": "loss/d", "max_points": args.max_points}

            def get() -> None:
                answer = client.get(path, params=query)
                assert answer.status_code == 200, answer.text
                series = answer.json()["series"]["loss/d"]
                assert 0 < len(series["step"]) <= args.max_points

            def fetch_only() -> None:
                with engine.connect() as conn:
                    read_series(conn, job_id, ["loss/d"], None, args.max_points)

            # Alternating, so that the machine's ups and downs hit both alike.
            both = timed_together([get, fetch_only], args.repeats)
            result["endpoint"], result["read_series"] = both

        print(
            f"{label}: GET {path}?max_points={args.max_points}: {result['endpoint']:.3f} s "
            f"(read_series alone {result['read_series']:.3f} s), median of {args.repeats}",
            flush=True,
        )
        if args.alternatives:
            alt = alternatives(engine, job_id, args.max_points)
            result["alternatives"] = alt
            for name, seconds in alt.items():
                print(f"{label}: {name}: {seconds:.3f} s", flush=True)
    finally:
        engine.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=int, default=200_000, help="points per ingestion run")
    parser.add_argument("--batches", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--series", type=int, default=1_000_000, help="points of the long series")
    parser.add_argument("--max-points", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--alternatives", action="store_true", help="also time SQL bucketing")
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args()

    load = os.getloadavg()[0]
    results = []
    with scratch_postgres() as url:
        results.append(run_backend("PostgreSQL", url, args))
    with scratch_sqlite() as url:
        results.append(run_backend("SQLite", url, args))

    head = " | ".join(f"ingest, batches of {b:,} (points/s)" for b in args.batches)
    lines = [
        f"| backend | {head} | GET metrics, {args.series:,}-point series (s) "
        "| read_series alone (s) |",
        "| --- | " + "--- | " * len(args.batches) + "--- | --- |",
    ]
    for r in results:
        rates = " | ".join(f"{r[f'ingest {b}']:,.0f}" for b in args.batches)
        lines.append(f"| {r['backend']} | {rates} | {r['endpoint']:.3f} | {r['read_series']:.3f} |")
    alt_lines = []
    for r in results:
        alt = r.get("alternatives")
        if isinstance(alt, dict):
            for name, seconds in alt.items():
                alt_lines.append(f"| {r['backend']} | {name} | {seconds:.3f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        command = "python bench/metrics.py " + " ".join(
            a for a in sys.argv[1:] if a not in ("--write", str(args.write))
        )
        body = (
            f"Command: `{command.strip()}` (1-minute load average {load:.1f} on "
            f"{os.cpu_count()} cores when it started)\n\n"
            f"Ingestion: {args.ingest:,} points of 10 series, one transaction per batch. "
            f"GET `/api/jobs/{{id}}/metrics?names=loss/d&max_points={args.max_points}` "
            f"through the app (TestClient), median of {args.repeats} after a warm-up; the "
            f"series has {args.series:,} points, 0.1 % of them NaN.\n\n{table}\n"
        )
        if alt_lines:
            body += (
                "\nThe approaches not taken, on the same series and buckets (the query "
                "alone, median of 3):\n\n| backend | approach | seconds |\n| --- | --- | --- |\n"
                + "\n".join(alt_lines)
                + "\n"
            )
        replace_section(args.write, "metrics", body)


if __name__ == "__main__":
    main()
