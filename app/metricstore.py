"""Metric points: fast ingestion and columnar, extreme-preserving reads (table metric_point).

Writing (`insert_points`): on PostgreSQL with psycopg 3 one text-format COPY per call
(the rows are formatted in Python and written in one piece), inside a savepoint; should
a point already exist (a resumed job logging a step again) the savepoint is rolled back
and the batch is upserted instead, so the caller's transaction survives and the last
write wins. On SQLite (and any other backend) one executemany of an INSERT ... ON
CONFLICT DO UPDATE. NaN and infinities are stored as NULL. The caller commits.

Reading (`read_series`, `query_series`): the raw (step, value) columns of each series
are fetched in one piece (PostgreSQL: two arrays sent in binary and read straight into
numpy; SQLite: the cursor iterated into numpy) and bucketed with numpy. Both were
measured faster than bucketing in SQL (GROUP BY with a sort or a hash, window
functions, correlated per-bucket subqueries): see docs/benchmarks.md, "Metric storage".

Downsampling keeps extremes. A series with more than `max_points` points is split into
B buckets of equal step width; each bucket keeps its minimum and its maximum finite
value (the first of ties) and its first null, and the series keeps its first and last
point. Null points (non-finite values) count against the budget like any other point:
B starts at (max_points - 2) // 2, which holds the budget when there are no nulls, and
is lowered while the nulls push the result over `max_points` (at most down to
(max_points - 2) // 3, where three points per bucket always fit). So a spike or a dip
is never dropped, the step where a series first goes non-finite is exact, and a run
of nulls shows as one null per bucket (a gap in a chart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection, delete, insert, select, text

from app.models import MetricPoint

Point = tuple[str, int, float | None]
Series = dict[str, list[Any]]  # {"step": [int, ...], "value": [float | None, ...]}

StepArray = npt.NDArray[np.int64]
ValueArray = npt.NDArray[np.float64]  # NaN where the stored value is NULL

_COPY = "COPY metric_point (job_id, name, step, value) FROM STDIN"
_UPSERT_SQLITE = (
    "INSERT INTO metric_point (job_id, name, step, value) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (job_id, name, step) DO UPDATE SET value = excluded.value"
)
_UPSERT_POSTGRES = (
    "INSERT INTO metric_point (job_id, name, step, value) "
    "SELECT %s, * FROM unnest(%s::text[], %s::int4[], %s::float8[]) "
    "ON CONFLICT (job_id, name, step) DO UPDATE SET value = EXCLUDED.value"
)
# Distinct names of a job by jumping through the primary key index (job_id, name, step)
# one name at a time, instead of reading every point: same cost for 1 or 10^7 points.
_NAMES = text(
    """
    WITH RECURSIVE names(name) AS (
        SELECT min(name) FROM metric_point WHERE job_id = :job_id
        UNION ALL
        SELECT (SELECT min(name) FROM metric_point WHERE job_id = :job_id AND name > names.name)
        FROM names WHERE names.name IS NOT NULL
    )
    SELECT name FROM names WHERE name IS NOT NULL
    """
)


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


# ---------------------------------------------------------------------------- writing


def insert_points(connection: Connection, job_id: str, points: list[Point]) -> None:
    """Store `(name, step, value)` points of a job in the caller's transaction.

    NaN and infinities become NULL. A point that exists already (same job, name and step)
    is overwritten, as is an earlier duplicate within `points`: the last write wins.
    """
    if not points:
        return
    dialect = connection.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        _insert_postgres(connection, job_id, points)
    else:
        rows = [(job_id, name, int(step), _finite(value)) for name, step, value in points]
        if dialect.name == "sqlite":
            connection.exec_driver_sql(_UPSERT_SQLITE, rows)
        else:  # pragma: no cover - the project runs on SQLite and PostgreSQL/psycopg
            _insert_generic(connection, rows)


def _copy_escape(value: str) -> str:
    """A string as a field of PostgreSQL's COPY text format."""
    return (
        value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    )


def _insert_postgres(connection: Connection, job_id: str, points: list[Point]) -> None:
    from psycopg.errors import UniqueViolation

    prefix = {name: f"{_copy_escape(job_id)}\t{_copy_escape(name)}\t" for name, _, _ in points}
    isfinite = math.isfinite
    # One string for the whole batch: about 1 µs a point, several times cheaper than
    # write_row (text or binary), and COPY then runs at the server's speed.
    payload = "".join(
        [
            f"{prefix[name]}{step:d}\t{float(value)!r}\n"
            if value is not None and isfinite(value)
            else f"{prefix[name]}{step:d}\t\\N\n"
            for name, step, value in points
        ]
    )
    try:
        with connection.begin_nested():  # also begins the caller's transaction if needed
            with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
                with cursor.copy(_COPY) as copy:
                    copy.write(payload)
    except UniqueViolation:
        # Some points exist already: upsert the batch (deduplicated, the last one wins;
        # ON CONFLICT may not touch a row twice in one statement).
        last = {(name, int(step)): _finite(value) for name, step, value in points}
        with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            cursor.execute(
                _UPSERT_POSTGRES,
                (
                    job_id,
                    [name for name, _ in last],
                    [step for _, step in last],
                    list(last.values()),
                ),
            )


def _insert_generic(
    connection: Connection, rows: list[tuple[str, str, int, float | None]]
) -> None:  # pragma: no cover - neither SQLite nor psycopg
    """Portable and slow: delete the points being written, then insert them."""
    last = {(job_id, name, step): value for job_id, name, step, value in rows}
    for job_id, name, step in last:
        connection.execute(
            delete(MetricPoint).where(
                MetricPoint.job_id == job_id, MetricPoint.name == name, MetricPoint.step == step
            )
        )
    connection.execute(
        insert(MetricPoint),
        [{"job_id": j, "name": n, "step": s, "value": v} for (j, n, s), v in last.items()],
    )


# ---------------------------------------------------------------------------- reading


def metric_names(connection: Connection, job_id: str) -> list[str]:
    """The names of a job's series, sorted."""
    return [name for (name,) in connection.execute(_NAMES, {"job_id": job_id})]


@dataclass
class SeriesResult:
    """What `read_series` found: the columnar series and, per series, its size before
    downsampling (after `since_step`) and whether it was downsampled."""

    series: dict[str, Series] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    downsampled: dict[str, bool] = field(default_factory=dict)


def query_series(
    connection: Connection,
    job_id: str,
    names: list[str] | None,
    since_step: int | None,
    max_points: int,
) -> dict[str, Series]:
    """`{name: {"step": [...], "value": [...]}}`: see `read_series`."""
    return read_series(connection, job_id, names, since_step, max_points).series


def read_series(
    connection: Connection,
    job_id: str,
    names: list[str] | None,
    since_step: int | None,
    max_points: int,
) -> SeriesResult:
    """The series `names` of a job (every series when None), steps ascending, only steps
    after `since_step` when given; null values (non-finite) as None. A requested name
    without points has empty lists. A series longer than `max_points` is downsampled
    keeping extremes (see the module's docstring); `max_points` must be at least 2.
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    if names is None:
        names = metric_names(connection, job_id)
    result = SeriesResult()
    for name in dict.fromkeys(names):
        steps, values = _fetch(connection, job_id, name, since_step)
        result.total[name] = int(steps.size)
        result.downsampled[name] = steps.size > max_points
        if steps.size > max_points:
            keep = downsample(steps, values, max_points)
            steps, values = steps[keep], values[keep]
        result.series[name] = {"step": steps.tolist(), "value": _values_list(values)}
    return result


def _values_list(values: ValueArray) -> list[float | None]:
    out: list[float | None] = values.tolist()
    for i in np.flatnonzero(np.isnan(values)).tolist():
        out[i] = None
    return out


def _fetch(
    connection: Connection, job_id: str, name: str, since_step: int | None
) -> tuple[StepArray, ValueArray]:
    """All points of one series (after `since_step`), steps ascending, NaN for null."""
    dialect = connection.dialect
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        steps, values = _fetch_postgres(connection, job_id, name, since_step)
    elif dialect.name == "sqlite":
        steps, values = _fetch_sqlite(connection, job_id, name, since_step)
    else:  # pragma: no cover - the project runs on SQLite and PostgreSQL/psycopg
        steps, values = _fetch_generic(connection, job_id, name, since_step)
    if steps.size > 1 and not bool(np.all(steps[1:] > steps[:-1])):
        order = np.argsort(steps, kind="stable")
        steps, values = steps[order], values[order]
    values[~np.isfinite(values)] = np.nan  # a stored inf (not written here) is a null too
    return steps, values


def _fetch_postgres(
    connection: Connection, job_id: str, name: str, since_step: int | None
) -> tuple[StepArray, ValueArray]:
    # Two arrays in PostgreSQL's binary array format, one row: a 20-byte header (ndim,
    # has-nulls flag, element type, length, lower bound), then per element a 4-byte
    # length and the big-endian value. Nulls are sent as NaN (COALESCE), so every element
    # has the same width and numpy reads the columns in place. Several times faster than
    # row-by-row fetching or COPY TO (one protocol message per row). Unordered: the index
    # or a sequential scan, whichever the planner prefers; numpy sorts when needed.
    sql = (
        "SELECT array_send(array_agg(step::int8)), "
        "array_send(array_agg(coalesce(value, 'NaN')::float8)) "
        "FROM metric_point WHERE job_id = %s AND name = %s"
    )
    params: tuple[Any, ...] = (job_id, name)
    if since_step is not None:
        sql += " AND step > %s"
        params += (since_step,)
    driver = connection.connection.driver_connection
    with driver.cursor(binary=True) as cursor:  # type: ignore[union-attr]
        cursor.execute(sql, params)
        row = cursor.fetchone()
    if row is None or row[0] is None:
        return np.empty(0, np.int64), np.empty(0, np.float64)
    steps = _binary_array(row[0], ">i8").astype(np.int64)
    values = _binary_array(row[1], ">f8").astype(np.float64)
    return steps, values


def _binary_array(data: bytes, dtype: str) -> npt.NDArray[Any]:
    header = np.frombuffer(data, ">i4", count=5)
    ndim, has_nulls, _, length, _ = header.tolist()
    element = np.dtype([("size", ">i4"), ("value", dtype)])
    if ndim != 1 or has_nulls or len(data) != 20 + length * element.itemsize:
        raise ValueError("unexpected array from PostgreSQL")
    return np.frombuffer(data, element, offset=20)["value"]


def _fetch_sqlite(
    connection: Connection, job_id: str, name: str, since_step: int | None
) -> tuple[StepArray, ValueArray]:
    # The sqlite3 cursor straight into numpy (no Row objects). SQLite cannot return NaN
    # (it stores NaN as NULL), so a null comes back as inf (the literal 9e999) and is
    # turned into NaN by _fetch; values written here are never infinite.
    sql = "SELECT step, ifnull(value, 9e999) FROM metric_point WHERE job_id = ? AND name = ?"
    params: tuple[Any, ...] = (job_id, name)
    if since_step is not None:
        sql += " AND step > ?"
        params += (since_step,)
    driver = connection.connection.driver_connection
    cursor = driver.execute(sql + " ORDER BY step", params)  # type: ignore[union-attr]
    try:
        rows = np.fromiter(cursor, dtype=[("step", np.int64), ("value", np.float64)])
    finally:
        cursor.close()
    return np.ascontiguousarray(rows["step"]), np.ascontiguousarray(rows["value"])


def _fetch_generic(
    connection: Connection, job_id: str, name: str, since_step: int | None
) -> tuple[StepArray, ValueArray]:  # pragma: no cover - neither SQLite nor psycopg
    query = select(MetricPoint.step, MetricPoint.value).where(
        MetricPoint.job_id == job_id, MetricPoint.name == name
    )
    if since_step is not None:
        query = query.where(MetricPoint.step > since_step)
    rows = connection.execute(query.order_by(MetricPoint.step)).all()
    steps = np.array([step for step, _ in rows], dtype=np.int64)
    values = np.array([np.nan if v is None else v for _, v in rows], dtype=np.float64)
    return steps, values


# ------------------------------------------------------------------------ downsampling


def downsample(steps: StepArray, values: ValueArray, max_points: int) -> npt.NDArray[np.intp]:
    """Indices (ascending) of at most `max_points` points of a series that keep, per
    bucket of equal step width, the minimum and maximum finite value and the first NaN,
    plus the first and last point. `steps` must be strictly ascending."""
    n = int(steps.size)
    if n <= max_points:
        return np.arange(n)
    extremes = _Extremes(steps, values)
    least = (max_points - 2) // 3  # three points a bucket always fit
    buckets = (max_points - 2) // 2  # fits when no bucket holds a null
    while True:
        keep = extremes(buckets)
        if keep.size <= max_points or buckets <= least:
            return keep
        # Nulls took the room: drop enough buckets for the excess at the current points
        # per bucket, with a margin (a bucket holds a null more often as it widens).
        per_bucket = (keep.size - 2) / buckets
        fewer = math.ceil(1.25 * (keep.size - max_points) / per_bucket)
        buckets = max(least, buckets - fewer)


def _first_of_runs(groups: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """True where a run of equal values starts."""
    starts = np.ones(groups.size, dtype=bool)
    starts[1:] = groups[1:] != groups[:-1]
    return starts


class _Extremes:
    """Per bucket count: the indices of the first point, the last point, and each bucket's
    minimum, maximum (first of ties) and first NaN. What does not depend on the bucket
    count is computed once."""

    def __init__(self, steps: StepArray, values: ValueArray) -> None:
        self.n = int(steps.size)
        self.span = int(steps[-1]) - int(steps[0]) + 1
        offsets = steps - steps[0]
        null = np.isnan(values)
        self.finite = np.flatnonzero(~null)
        self.finite_offsets = offsets[self.finite]
        self.finite_values = values[self.finite]
        self.nulls = np.flatnonzero(null)
        self.null_offsets = offsets[self.nulls]

    def __call__(self, buckets: int) -> npt.NDArray[np.intp]:
        parts = [np.array([0, self.n - 1], dtype=np.intp)]
        if buckets > 0 and self.finite.size:
            groups = self.finite_offsets * buckets // self.span  # ascending: contiguous
            starts = np.flatnonzero(_first_of_runs(groups))
            sizes = np.diff(np.append(starts, groups.size))
            for reduce in (np.minimum, np.maximum):
                extreme = np.repeat(reduce.reduceat(self.finite_values, starts), sizes)
                hits = np.flatnonzero(self.finite_values == extreme)
                parts.append(self.finite[hits[_first_of_runs(groups[hits])]])
        if buckets > 0 and self.nulls.size:
            groups = self.null_offsets * buckets // self.span
            parts.append(self.nulls[_first_of_runs(groups)])
        return np.unique(np.concatenate(parts))
