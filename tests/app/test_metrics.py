"""Metric storage and GET /api/jobs/{id}/metrics on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy.orm import Session

from app.downsample import downsample
from app.metricstore import insert_points, metric_names, read_series


@pytest.fixture
def job_id(client) -> str:
    made = client.post("/api/jobs", json={"spec": {"steps": 50}})
    assert made.status_code == 201, made.text
    return str(made.json()["id"])


def metrics(client, job_id: str, **params):
    answer = client.get(f"/api/jobs/{job_id}/metrics", params=params)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_small_series_come_back_exactly(client, engine, job_id):
    with engine.begin() as conn:
        insert_points(conn, job_id, [("loss/d", s, 0.5 + s / 3) for s in range(0, 50, 10)])
        insert_points(conn, job_id, [("loss/g", 7, -1e-300), ("loss/g", 3, 2.0)])
    body = metrics(client, job_id)
    assert body["job_id"] == job_id
    assert body["series"] == {
        "loss/d": {"step": [0, 10, 20, 30, 40], "value": [0.5 + s / 3 for s in range(0, 50, 10)]},
        "loss/g": {"step": [3, 7], "value": [2.0, -1e-300]},
    }
    assert body["downsampled"] == {"loss/d": False, "loss/g": False}
    assert body["total"] == {"loss/d": 5, "loss/g": 2}
    with engine.connect() as conn:
        assert metric_names(conn, job_id) == ["loss/d", "loss/g"]


def test_since_step_and_names_filter(client, engine, job_id):
    with engine.begin() as conn:
        for name in ("loss/d", "loss/g", "d/real"):
            insert_points(conn, job_id, [(name, s, float(s)) for s in range(1, 11)])
    body = metrics(client, job_id, since_step=7)
    assert set(body["series"]) == {"loss/d", "loss/g", "d/real"}
    assert body["series"]["d/real"] == {"step": [8, 9, 10], "value": [8.0, 9.0, 10.0]}
    # comma-separated and repeated, duplicates once, unknown names empty
    answer = client.get(
        f"/api/jobs/{job_id}/metrics",
        params=[("names", "loss/g, nope"), ("names", "d/real,loss/g"), ("since_step", "10")],
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["series"] == {
        "loss/g": {"step": [], "value": []},
        "nope": {"step": [], "value": []},
        "d/real": {"step": [], "value": []},
    }
    assert list(metrics(client, job_id, names="d/real")["series"]) == ["d/real"]


def test_unknown_job_and_bad_parameters(client, job_id):
    answer = client.get("/api/jobs/nope/metrics")
    assert answer.status_code == 404 and answer.json() == {"detail": "job nope not found"}
    assert client.get("/api/jobs/a%00b/metrics").status_code == 404
    for params, field in [
        ({"max_points": 1}, "max_points"),
        ({"max_points": 100_001}, "max_points"),
        ({"max_points": "many"}, "max_points"),
        ({"since_step": -1}, "since_step"),
    ]:
        answer = client.get(f"/api/jobs/{job_id}/metrics", params=params)
        assert answer.status_code == 422, params
        assert answer.json()["detail"][0]["field"] == field
    for names in (",", "a\x00b"):
        answer = client.get(f"/api/jobs/{job_id}/metrics", params={"names": names})
        assert answer.status_code == 422 and answer.json()["detail"][0]["message"].startswith(
            "names: "
        )
    schema = client.get("/openapi.json").json()
    assert "MetricsOut" in str(schema["paths"]["/api/jobs/{job_id}/metrics"])
    assert metrics(client, job_id) == {
        "job_id": job_id,
        "series": {},
        "downsampled": {},
        "total": {},
    }


def test_downsampling_keeps_a_spike_a_dip_and_the_first_nan(client, engine, job_id):
    n = 20_000
    values: list[float | None] = [math.sin(s / 500) for s in range(n)]
    values[7_777] = 50.0  # one spike
    values[12_345] = -50.0  # one dip
    values[15_001] = math.nan  # one NaN in the middle
    for s in range(19_000, n):
        values[s] = math.inf if s % 2 else math.nan  # the run diverges for good
    with engine.begin() as conn:
        insert_points(conn, job_id, [("loss/d", s, v) for s, v in enumerate(values)])
    for max_points in (2, 3, 7, 100, 2000):
        body = metrics(client, job_id, max_points=max_points)
        series = body["series"]["loss/d"]
        steps, got = series["step"], series["value"]
        assert body["downsampled"] == {"loss/d": True} and body["total"] == {"loss/d": n}
        assert len(steps) == len(got) <= max_points
        assert steps == sorted(set(steps)) and steps[0] == 0 and steps[-1] == n - 1
        for s, v in zip(steps, got, strict=True):
            assert v == values[s] if v is not None else not math.isfinite(values[s])
        if max_points >= 7:
            assert 7_777 in steps and 12_345 in steps  # the extremes survive
            assert max(v for v in got if v is not None) == 50.0
            assert min(v for v in got if v is not None) == -50.0
        if max_points >= 100:
            assert 15_001 in steps and 19_000 in steps  # where it first went NaN
            assert got[steps.index(15_001)] is None and got[-1] is None
    # The same points on every backend and route (SQLite buckets this series in SQL for 7
    # and 100 points, nulls forcing merged buckets at 100): what numpy keeps of it all.
    with engine.connect() as conn:
        whole = read_series(conn, job_id, ["loss/d"], None, 100_000).series["loss/d"]
    steps = np.array(whole["step"], dtype=np.int64)
    array = np.array([math.nan if v is None else v for v in whole["value"]])
    for max_points in (7, 100, 2000):
        keep = downsample(steps, array, max_points).tolist()
        got = metrics(client, job_id, max_points=max_points)["series"]["loss/d"]
        assert got["step"] == steps[keep].tolist()
        assert got["value"] == [None if math.isnan(v) else v for v in array[keep].tolist()]
    # since_step downsamples what is left
    late = metrics(client, job_id, since_step=12_000, max_points=50)["series"]["loss/d"]
    assert late["step"][0] == 12_001 and 12_345 in late["step"] and len(late["step"]) <= 50


def test_insert_points_round_trips_nan_and_overwrites_duplicates(engine, job_id):
    with engine.begin() as conn:
        insert_points(conn, job_id, [("x", 1, math.nan), ("x", 2, -math.inf), ("x", 3, 1.5)])
        insert_points(conn, job_id, [("x", 4, np.float64(2.5)), ("x", 5, None), ("x", 6, 7)])
    with engine.connect() as conn:
        assert read_series(conn, job_id, ["x"], None, 10).series == {
            "x": {"step": [1, 2, 3, 4, 5, 6], "value": [None, None, 1.5, 2.5, None, 7.0]}
        }
    # A resumed job writes steps 3..4 again (with a duplicate in the batch): last one wins,
    # and the transaction goes on.
    with engine.begin() as conn:
        insert_points(conn, job_id, [("x", 3, 0.25), ("x", 4, 1.0), ("x", 4, 9.0), ("x", 8, 8)])
        insert_points(conn, job_id, [("y", 1, 1.0)])
    with engine.connect() as conn:
        assert read_series(conn, job_id, None, 2, 10).series == {
            "x": {"step": [3, 4, 5, 6, 8], "value": [0.25, 9.0, None, 7.0, 8.0]},
            "y": {"step": [], "value": []},
        }
    # Nothing is written when the caller rolls back; an explicit commit on a plain
    # connection keeps the points.
    with engine.connect() as conn:
        insert_points(conn, job_id, [("z", 1, 1.0)])
        conn.rollback()
        insert_points(conn, job_id, [("w", 1, 1.0)])
        conn.commit()
    # Through an ORM session's connection (a duplicate again), committed by the session.
    with Session(engine) as session:
        insert_points(session.connection(), job_id, [("w", 1, 2.0), ("v", 1, 3.0)])
        session.commit()
    with engine.connect() as conn:
        assert metric_names(conn, job_id) == ["v", "w", "x", "y"]
        assert read_series(conn, job_id, ["w"], None, 2).series == {
            "w": {"step": [1], "value": [2.0]}
        }
