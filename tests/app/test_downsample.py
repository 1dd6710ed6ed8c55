"""app.downsample on series in memory: the budget, the extremes, the first null."""

from __future__ import annotations

import numpy as np

from app.downsample import bucket_count, downsample, fine_numpy, pick


def test_downsample_bounds_with_nulls_everywhere():
    rng = np.random.default_rng(0)
    steps = np.cumsum(rng.integers(1, 5, 5_000)).astype(np.int64)
    values = rng.normal(size=steps.size)
    values[rng.random(steps.size) < 0.3] = np.nan  # nulls in nearly every bucket
    for max_points in (2, 3, 4, 5, 10, 333, 4_999):
        keep = downsample(steps, values, max_points)
        assert keep.size <= max_points and np.all(np.diff(keep) > 0)
        assert keep[0] == 0 and keep[-1] == steps.size - 1
    keep = downsample(steps, values, 1000)
    assert int(np.nanargmax(values)) in keep and int(np.nanargmin(values)) in keep
    assert int(np.flatnonzero(np.isnan(values))[0]) in keep
    assert np.array_equal(downsample(steps, values, 5_000), np.arange(5_000))


def test_each_bucket_keeps_its_extremes_and_first_null_and_the_ends() -> None:
    steps = np.arange(100, dtype=np.int64)
    values = np.zeros(100)
    values[13], values[17] = 5.0, -5.0  # bucket 1 of 4 (steps 0-24 are bucket 0)
    values[30] = values[31] = 9.0  # a tie: the first one stays
    values[60:63] = np.nan  # the first null of its bucket stays
    keep = downsample(steps, values, 10)  # 4 buckets of 25 steps
    # first; bucket 0 max 13, min 17; bucket 1 min 25 (first 0), max 30 (not 31);
    # bucket 2 min = max 50, first null 60; bucket 3 at 75; last
    assert keep.tolist() == [0, 13, 17, 25, 30, 50, 60, 75, 99]


def test_pick_merges_buckets_when_nulls_take_the_room() -> None:
    rng = np.random.default_rng(1)
    steps = np.arange(10_000, dtype=np.int64)
    values = rng.normal(size=steps.size)
    values[::7] = np.nan  # a null in every bucket: min, max and null = 3 points a bucket
    fine = fine_numpy(steps, values, bucket_count(100))
    kept, _ = pick(fine, 100)
    assert kept.size <= 100 and kept[0] == 0 and kept[-1] == 9_999
    assert int(np.nanargmax(values)) in kept and int(np.nanargmin(values)) in kept
