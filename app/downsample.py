"""Downsampling a metric series so that its extremes survive (pure numpy, no database).

Downsampling keeps extremes. A series with more than `max_points` points is split into
B = (max_points - 2) // 2 buckets of equal step width; each bucket keeps its minimum and
its maximum finite value (the first of ties) and its first null, and the series keeps
its first and last point. So a spike or a dip is never dropped and the step where a
series first goes non-finite is exact. Null points (non-finite values) count against
the budget like any other point: when the nulls push the result over `max_points`,
adjacent buckets are merged into fewer groups (each group keeping its minimum, maximum
and first null), as few merges as fit the budget (three points a group always fit). A
run of nulls thus shows as one null per group: a gap in a chart. The result is the same
on every backend and route.

`downsample` works on a series in memory; app.metricstore also fills a `Fine` from SQLite's
own aggregates for long series and picks the points with the same `pick`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

StepArray = npt.NDArray[np.int64]
ValueArray = npt.NDArray[np.float64]  # NaN where the stored value is NULL


@dataclass
class Fine:
    """A series cut into fine buckets of equal step width: per bucket the step and value of
    its minimum and of its maximum finite value (the first of ties; -1 and +-inf where the
    bucket has none) and the step of its first null (-1: none); and the first and last
    point of the series (value NaN for a null)."""

    min_step: StepArray
    min_value: ValueArray
    max_step: StepArray
    max_value: ValueArray
    null_step: StepArray
    first: tuple[int, float]
    last: tuple[int, float]

    @classmethod
    def empty(cls, buckets: int, first: tuple[int, float], last: tuple[int, float]) -> Fine:
        return cls(
            min_step=np.full(buckets, -1, np.int64),
            min_value=np.full(buckets, np.inf),
            max_step=np.full(buckets, -1, np.int64),
            max_value=np.full(buckets, -np.inf),
            null_step=np.full(buckets, -1, np.int64),
            first=first,
            last=last,
        )


def bucket_count(max_points: int) -> int:
    return (max_points - 2) // 2  # two points a bucket, and the first and the last


def downsample(steps: StepArray, values: ValueArray, max_points: int) -> npt.NDArray[np.intp]:
    """Indices (ascending) of at most `max_points` points of a series that keep its first
    and last point and, per bucket, the minimum and maximum finite value and the first NaN
    (see the module's docstring). `steps` must be strictly ascending."""
    if steps.size <= max_points:
        return np.arange(steps.size)
    kept, _ = pick(fine_numpy(steps, values, bucket_count(max_points)), max_points)
    return np.searchsorted(steps, kept)


def _first_of_runs(groups: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """True where a run of equal values starts."""
    starts = np.ones(groups.size, dtype=bool)
    starts[1:] = groups[1:] != groups[:-1]
    return starts


def fine_numpy(steps: StepArray, values: ValueArray, buckets: int) -> Fine:
    """Fine of a whole series in memory (steps strictly ascending, NaN for null)."""
    fine = Fine.empty(
        buckets, (int(steps[0]), float(values[0])), (int(steps[-1]), float(values[-1]))
    )
    if buckets == 0:
        return fine
    span = int(steps[-1]) - int(steps[0]) + 1
    bucket = (steps - steps[0]) * buckets // span  # ascending: each bucket is one run
    null = np.isnan(values)
    finite = np.flatnonzero(~null)
    if finite.size:
        groups, kept = bucket[finite], values[finite]
        starts = np.flatnonzero(_first_of_runs(groups))
        sizes = np.diff(np.append(starts, groups.size))
        ids = groups[starts]
        for reduce, at, value in (
            (np.minimum, fine.min_step, fine.min_value),
            (np.maximum, fine.max_step, fine.max_value),
        ):
            extreme = reduce.reduceat(kept, starts)
            hits = np.flatnonzero(kept == np.repeat(extreme, sizes))
            at[ids] = steps[finite[hits[_first_of_runs(groups[hits])]]]
            value[ids] = extreme
    nulls = np.flatnonzero(null)
    if nulls.size:
        first = _first_of_runs(bucket[nulls])
        fine.null_step[bucket[nulls][first]] = steps[nulls[first]]
    return fine


def pick(fine: Fine, max_points: int) -> tuple[StepArray, ValueArray]:
    """The points kept: with every fine bucket its own group when that fits the budget,
    else with adjacent buckets merged into fewer groups (nulls took the room)."""
    least = (max_points - 2) // 3  # three points a group always fit
    groups = fine.min_step.size
    while True:
        steps, values = group(fine, groups)
        if steps.size <= max_points or groups <= least:
            return steps, values
        # Drop enough groups for the excess at the current points per group, with a
        # margin (a group holds a null more often as it widens).
        per_group = (steps.size - 2) / groups
        groups = max(least, groups - math.ceil(1.25 * (steps.size - max_points) / per_group))


def group(fine: Fine, groups: int) -> tuple[StepArray, ValueArray]:
    """First and last point, and per group of adjacent fine buckets its minimum, maximum
    (the first of ties, in step order) and first null; steps ascending, each once."""
    steps = [np.array([fine.first[0], fine.last[0]], np.int64)]
    values = [np.array([fine.first[1], fine.last[1]])]
    buckets = fine.min_step.size
    if groups > 0 and buckets > 0:
        group = np.arange(buckets, dtype=np.int64) * groups // buckets
        starts = np.flatnonzero(_first_of_runs(group))
        sizes = np.diff(np.append(starts, buckets))
        for reduce, at, value in (
            (np.minimum, fine.min_step, fine.min_value),
            (np.maximum, fine.max_step, fine.max_value),
        ):
            extreme = np.repeat(reduce.reduceat(value, starts), sizes)
            hits = np.flatnonzero((value == extreme) & (at >= 0))
            chosen = hits[_first_of_runs(group[hits])]
            steps.append(at[chosen])
            values.append(value[chosen])
        nulls = np.flatnonzero(fine.null_step >= 0)
        chosen = nulls[_first_of_runs(group[nulls])]
        steps.append(fine.null_step[chosen])
        values.append(np.full(chosen.size, np.nan))
    all_steps = np.concatenate(steps)
    unique, index = np.unique(all_steps, return_index=True)
    return unique, np.concatenate(values)[index]
