"""/api/jobs/{id}/metrics: a job's metric series, columnar, downsampled keeping extremes.

`names` is a comma-separated list and may be repeated (`?names=loss/d,loss/g&names=d/real`);
without it every series of the job is returned. `since_step` keeps the points after that
step (for polling), `max_points` caps each series (app.metricstore explains how
downsampling keeps minima, maxima and nulls). Null values are NaN or inf in the run.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response
from pydantic import BaseModel, Field

from app.deps import SessionDep, job_or_404, unprocessable
from app.metricstore import read_series

router = APIRouter(prefix="/api")


class SeriesOut(BaseModel):
    step: list[int]
    value: list[float | None] = Field(description="null where the value was NaN or inf")


class MetricsOut(BaseModel):
    job_id: str
    series: dict[str, SeriesOut]
    downsampled: dict[str, bool] = Field(description="per series: whether points were dropped")
    total: dict[str, int] = Field(
        description="per series: its points (after since_step) before downsampling"
    )


def _names(raw: list[str] | None) -> list[str] | None:
    if raw is None:
        return None
    names = [name.strip() for item in raw for name in item.split(",")]
    names = [name for name in names if name]
    if not names:
        raise unprocessable("names", "give at least one metric name", where="query")
    if any("\x00" in name for name in names):
        raise unprocessable("names", "a metric name cannot contain NUL", where="query")
    return list(dict.fromkeys(names))


@router.get("/jobs/{job_id}/metrics", response_model=MetricsOut)
def job_metrics(
    job_id: str,
    session: SessionDep,
    names: Annotated[
        list[str] | None,
        Query(description="comma-separated metric names; may be repeated; default: all"),
    ] = None,
    since_step: Annotated[
        int | None, Query(ge=0, description="only points with a step after this one")
    ] = None,
    max_points: Annotated[int, Query(ge=2, le=100_000, description="at most per series")] = 2000,
) -> Response:
    """A job's metric series `{name: {"step": [...], "value": [...]}}`, steps ascending."""
    wanted = _names(names)
    if "\x00" in job_id:  # PostgreSQL refuses NUL in a string: no such job can exist
        raise HTTPException(404, f"job {job_id} not found")
    job_or_404(session, job_id)
    found = read_series(session.connection(), job_id, wanted, since_step, max_points)
    body = MetricsOut(
        job_id=job_id,
        series={name: SeriesOut.model_validate(s) for name, s in found.series.items()},
        downsampled=found.downsampled,
        total=found.total,
    )
    # Serialized by pydantic-core in one go (lists of up to 100,000 numbers per series).
    return Response(body.model_dump_json(), media_type="application/json")
