"""Retention over the API and the database (app/retention.py, app/routes/retention.py), on
SQLite and PostgreSQL: the plan, pins, deletes through the trash (crash-safe, never a listed
checkpoint without its file), artifact_bytes and the Prometheus gauge.

Checkpoints here are stored as the worker stores them (files in the artifact store, a row
each with its size and sidecar size) without training: retention reads rows, metric points
and files, never the tensors. tests/worker/test_retention.py runs a real job."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from app import retention
from app.api import create_app
from app.db import make_engine
from app.metricstore import insert_points
from app.models import ArtifactTrash, Checkpoint, Job, Sample, utcnow
from app.settings import Settings
from app.store import ArtifactStore

STEPS = (100, 200, 300, 400, 500)
# eval/fid at these steps; 300 is NaN (stored NULL); 450 comes after checkpoint 400, so 400
# keeps 3.0 and 500 gets 2.0 (the largest metric step at or before it).
FID = {100: 5.0, 200: 1.0, 300: float("nan"), 400: 3.0, 450: 2.0}
POLICY = {"keep_last": 1, "keep_best": 1, "best_metric": "eval/fid", "mode": "min"}


def sessions_of(client: TestClient) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = client.app.state.sessions  # type: ignore[attr-defined]
    return factory


def engine_of(client: TestClient) -> Engine:
    engine: Engine = sessions_of(client).kw["bind"]
    return engine


def store_of(client: TestClient) -> ArtifactStore:
    store: ArtifactStore = client.app.state.store  # type: ignore[attr-defined]
    return store


def settings_of(client: TestClient) -> Settings:
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    return settings


def new_job(client: TestClient, retention_: dict[str, Any] | None = POLICY) -> str:
    spec: dict[str, Any] = {"steps": 1000}
    if retention_ is not None:
        spec["retention"] = retention_
    answer = client.post("/api/jobs", json={"spec": spec})
    assert answer.status_code == 201, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def paths(job_id: str, step: int) -> tuple[str, str]:
    tensors = f"{ArtifactStore.checkpoint_dir(job_id)}/step_{step:06d}.safetensors"
    return tensors, ArtifactStore.sidecar_path(tensors)


def add_checkpoints(
    client: TestClient, job_id: str, steps: tuple[int, ...] = STEPS, fid: dict | None = FID
) -> None:
    """Files first, then the rows (as the worker's sink); eval/fid points when given."""
    store = store_of(client)
    rows = []
    for step in steps:  # outside the transaction: the db store writes through its own
        tensors, sidecar = paths(job_id, step)
        data, meta = b"t" * (1000 + step), b'{"step": %d}' % step
        store.write(tensors, data)
        store.write(sidecar, meta)
        rows.append(
            {
                "job_id": job_id,
                "step": step,
                "path": tensors,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "sidecar_size": len(meta),
            }
        )
    with engine_of(client).begin() as conn:
        conn.execute(insert(Checkpoint), rows)
        if fid:
            insert_points(conn, job_id, [("eval/fid", s, v) for s, v in fid.items()])


def set_status(client: TestClient, job_id: str, status: str) -> None:
    with engine_of(client).begin() as conn:
        conn.execute(update(Job).where(Job.id == job_id).values(status=status))


def listed(client: TestClient, job_id: str) -> list[int]:
    with engine_of(client).connect() as conn:
        return list(
            conn.scalars(
                select(Checkpoint.step).where(Checkpoint.job_id == job_id).order_by(Checkpoint.step)
            )
        )


def trash(client: TestClient) -> dict[str, Any]:
    with engine_of(client).connect() as conn:
        return dict(conn.execute(select(ArtifactTrash.path, ArtifactTrash.delete_after)).all())


def files(client: TestClient, job_id: str) -> set[str]:
    return {path for path, _ in store_of(client).list(ArtifactStore.checkpoint_dir(job_id))}


def assert_every_listed_checkpoint_has_its_files(client: TestClient) -> None:
    store = store_of(client)
    with engine_of(client).connect() as conn:
        for path, size in conn.execute(select(Checkpoint.path, Checkpoint.size)):
            assert store.size(path) == size, path
            assert store.exists(ArtifactStore.sidecar_path(path)), path


def later(seconds: float) -> Any:
    return utcnow() + timedelta(seconds=seconds)


# ---- the plan -------------------------------------------------------------------------------


def test_the_plan_says_what_the_policy_keeps_and_why(client: TestClient) -> None:
    job = new_job(client)
    add_checkpoints(client, job)
    answer = client.get(f"/api/jobs/{job}/retention")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["policy"] == {
        **POLICY,
        "keeps_everything": False,
        "source": {"keep_last": "spec", "keep_best": "spec"},
    }
    items = {item["step"]: item for item in body["items"]}
    assert list(items) == list(STEPS)
    assert {s: i["keep"] for s, i in items.items()} == {
        100: False,
        200: True,
        300: False,
        400: False,
        500: True,
    }
    assert {s: i["value"] for s, i in items.items()} == {
        100: 5.0,
        200: 1.0,
        300: None,
        400: 3.0,
        500: 2.0,
    }
    assert items[200]["reason"] == "one of the best 1 by eval/fid (min): 1"
    assert items[500]["reasons"] == ["latest: the job resumes from it", "one of the last 1"]
    assert items[100]["reason"] == "outside the policy"
    assert [s for s, i in items.items() if i["best"]] == [200]
    assert items[100]["size"] == 1100 and items[100]["sidecar_size"] == len(b'{"step": 100}')
    size = {s: 1000 + s + len(b'{"step": %d}' % s) for s in STEPS}
    assert body["bytes_kept"] == size[200] + size[500]
    assert body["bytes_deleted"] == size[100] + size[300] + size[400]
    assert body["delete_grace_seconds"] == 60
    assert listed(client, job) == list(STEPS)  # a preview deletes nothing
    assert client.get("/api/jobs/nope/retention").status_code == 404


def test_the_defaults_come_from_the_settings_and_keep_everything(client: TestClient) -> None:
    job = new_job(client, retention_=None)
    add_checkpoints(client, job)
    body = client.get(f"/api/jobs/{job}/retention").json()
    assert body["policy"]["keeps_everything"] and body["bytes_deleted"] == 0
    assert all(item["keep"] for item in body["items"])
    retention.apply(engine_of(client), store_of(client), job, settings_of(client))
    assert listed(client, job) == list(STEPS)  # today's behaviour: nothing deleted
    client.app.state.settings = settings_of(client).model_copy(update={"keep_last": 2})  # type: ignore[attr-defined]
    body = client.get(f"/api/jobs/{job}/retention").json()
    assert body["policy"]["source"]["keep_last"] == "GANFORGE_KEEP_LAST"
    assert [i["step"] for i in body["items"] if i["keep"]] == [400, 500]


# ---- pins ---------------------------------------------------------------------------------


def test_a_pin_keeps_a_checkpoint_until_it_is_unpinned(client: TestClient) -> None:
    job = new_job(client)
    add_checkpoints(client, job)
    pinned = client.post(f"/api/jobs/{job}/checkpoints/100/pin")
    assert pinned.status_code == 200, pinned.text
    assert pinned.json()["step"] == 100 and pinned.json()["pinned"] is True
    items = client.get(f"/api/jobs/{job}/checkpoints").json()["items"]
    assert [(c["step"], c["pinned"], c["best"]) for c in items] == [
        (100, True, False),
        (200, False, True),
        (300, False, False),
        (400, False, False),
        (500, False, False),
    ]
    plan = client.get(f"/api/jobs/{job}/retention").json()["items"]
    assert plan[0]["keep"] and plan[0]["reason"] == "pinned" and plan[0]["pinned"]
    retention.apply(engine_of(client), store_of(client), job, settings_of(client))
    assert listed(client, job) == [100, 200, 500]  # the pin survives the policy
    assert client.post(f"/api/jobs/{job}/checkpoints/100/pin").status_code == 200  # again: fine
    unpinned = client.delete(f"/api/jobs/{job}/checkpoints/100/pin")
    assert unpinned.status_code == 200 and unpinned.json()["pinned"] is False
    retention.apply(engine_of(client), store_of(client), job, settings_of(client))
    assert listed(client, job) == [200, 500]
    for method in ("POST", "DELETE"):
        assert client.request(method, f"/api/jobs/{job}/checkpoints/300/pin").status_code == 404
        assert client.request(method, f"/api/jobs/{job}/checkpoints/-1/pin").status_code == 404
        assert client.request(method, "/api/jobs/nope/checkpoints/100/pin").status_code == 404


# ---- deleting -----------------------------------------------------------------------------


def test_apply_deletes_rows_at_once_and_files_after_the_grace_period(client: TestClient) -> None:
    job = new_job(client)
    add_checkpoints(client, job)
    before = utcnow()
    plan = retention.apply(engine_of(client), store_of(client), job, settings_of(client))
    assert plan is not None and [e.step for e in plan.deleted] == [100, 300, 400]
    assert listed(client, job) == [200, 500]
    doomed = {p for s in (100, 300, 400) for p in paths(job, s)}
    notes = trash(client)
    assert set(notes) == doomed
    for when in notes.values():
        assert before + timedelta(seconds=59) < when <= utcnow() + timedelta(seconds=60)
    # The files stay for readers that found the rows just before; the API lists none of them.
    assert files(client, job) == {p for s in STEPS for p in paths(job, s)}
    assert client.get(f"/api/jobs/{job}/checkpoints/100").status_code == 404
    assert [c["step"] for c in client.get(f"/api/jobs/{job}/checkpoints").json()["items"]] == [
        200,
        500,
    ]
    # Not due yet: nothing goes.
    assert retention.collect_trash(engine_of(client), store_of(client), later(30)) == []
    removed = retention.collect_trash(engine_of(client), store_of(client), later(61))
    assert set(removed) == doomed and trash(client) == {}
    assert files(client, job) == {p for s in (200, 500) for p in paths(job, s)}
    assert_every_listed_checkpoint_has_its_files(client)


def test_the_delete_route_and_its_safety_rules(client: TestClient) -> None:
    job = new_job(client)  # queued: unfinished
    add_checkpoints(client, job)
    newest = client.delete(f"/api/jobs/{job}/checkpoints/500")
    assert newest.status_code == 409, newest.text
    assert "newest" in newest.json()["detail"] and "not finished" in newest.json()["detail"]
    assert client.post(f"/api/jobs/{job}/checkpoints/200/pin").status_code == 200
    pinned = client.delete(f"/api/jobs/{job}/checkpoints/200")
    assert pinned.status_code == 409 and "pinned; unpin it first" in pinned.json()["detail"]
    assert client.delete(f"/api/jobs/{job}/checkpoints/300").status_code == 204
    assert listed(client, job) == [100, 200, 400, 500]
    assert set(trash(client)) == set(paths(job, 300))
    assert store_of(client).exists(paths(job, 300)[0])  # until the grace period has passed
    for url, why in (
        (f"/api/jobs/{job}/checkpoints/300", "no checkpoint at step 300"),
        (f"/api/jobs/{job}/checkpoints/{2**40}", "no checkpoint"),
        ("/api/jobs/nope/checkpoints/100", "job nope not found"),
    ):
        answer = client.delete(url)
        assert answer.status_code == 404 and why in answer.json()["detail"], answer.text
    # A finished job's newest checkpoint may go (nothing resumes from it meanwhile).
    set_status(client, job, "succeeded")
    assert client.delete(f"/api/jobs/{job}/checkpoints/500").status_code == 204
    assert listed(client, job) == [100, 200, 400]
    assert_every_listed_checkpoint_has_its_files(client)
    retention.collect_trash(engine_of(client), store_of(client), later(61))
    assert not store_of(client).exists(paths(job, 500)[0])
    assert store_of(client).exists(paths(job, 400)[0])


def test_the_policy_never_deletes_the_newest_even_if_it_looks_away(client: TestClient) -> None:
    job = new_job(client)
    add_checkpoints(client, job, steps=(100, 200))
    with engine_of(client).begin() as conn:
        # Asked to delete everything (a stale plan, say): the newest and pinned rows stay.
        conn.execute(update(Checkpoint).where(Checkpoint.step == 100).values(pinned=True))
        gone = retention.trash_checkpoints(conn, job, [100, 200], later(60))
    assert gone == [] and listed(client, job) == [100, 200]


# ---- crash safety, on every store -----------------------------------------------------------


@pytest.fixture(params=["file", "s3", "db"])
def any_store_client(
    request: pytest.FixtureRequest, database_url: str, tmp_path: Path
) -> Iterator[TestClient]:
    """The API on this test's database with each artifact store (db: in that database)."""
    extra: dict[str, Any] = {}
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        extra = {
            "artifact_url": f"s3://{server.new_bucket()}/deploy",
            "s3_endpoint_url": server.endpoint_url,
        }
    elif request.param == "db":
        extra = {"artifact_url": "db"}
    engine = make_engine(database_url)
    settings = Settings(
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_dir=tmp_path / "artifacts",
        cache_dir=tmp_path / "cache",
        **extra,
    )
    with TestClient(create_app(settings, engine), base_url="http://localhost") as client:
        yield client
        store_of(client).close()
    engine.dispose()


def test_a_crash_between_the_rows_and_the_files_is_completed_by_the_next_pass(
    any_store_client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = any_store_client
    job = new_job(client)
    add_checkpoints(client, job)
    settings = settings_of(client).model_copy(update={"delete_grace_seconds": 0})

    def crash(*args: Any, **kwargs: Any) -> list[str]:
        raise SystemExit("the worker died here")

    # 1. The worker dies after the row transaction committed, before any file went.
    monkeypatch.setattr(retention, "collect_trash", crash)
    with pytest.raises(SystemExit):
        retention.apply(engine_of(client), store_of(client), job, settings)
    monkeypatch.undo()
    doomed = {p for s in (100, 300, 400) for p in paths(job, s)}
    assert listed(client, job) == [200, 500]  # rows gone
    assert set(trash(client)) == doomed  # the notes are there
    assert files(client, job) == {p for s in STEPS for p in paths(job, s)}  # files too
    assert_every_listed_checkpoint_has_its_files(client)

    # 2. The next pass dies deleting the second file: the first is done, the rest noted.
    real = retention._delete_file
    calls = []

    def die_on_the_second(conn: Any, store: ArtifactStore, path: str) -> None:
        calls.append(path)
        if len(calls) == 2:
            raise OSError("the store went away")
        real(conn, store, path)

    monkeypatch.setattr(retention, "_delete_file", die_on_the_second)
    removed = retention.collect_trash(engine_of(client), store_of(client))
    monkeypatch.undo()
    assert len(removed) == len(doomed) - 1 and calls[1] not in removed
    assert set(trash(client)) == {calls[1]} and store_of(client).exists(calls[1])
    assert_every_listed_checkpoint_has_its_files(client)

    # 3. The reconciler's pass completes it.
    from app.reconcile import reconcile

    assert reconcile(engine_of(client), settings, store_of(client)).trashed == 1
    assert trash(client) == {}
    assert files(client, job) == {p for s in (200, 500) for p in paths(job, s)}
    assert_every_listed_checkpoint_has_its_files(client)


def test_a_file_written_again_at_a_trashed_path_is_not_collected(
    any_store_client: TestClient,
) -> None:
    client = any_store_client
    job = new_job(client)
    add_checkpoints(client, job)
    set_status(client, job, "cancelled")
    assert client.delete(f"/api/jobs/{job}/checkpoints/500").status_code == 204
    assert client.delete(f"/api/jobs/{job}/checkpoints/400").status_code == 204
    # The job resumes from 300 and writes step 400 again (notes forgotten first, as the
    # worker's sink does); 500's note stays. Then the grace period passes.
    retention.untrash(engine_of(client), list(paths(job, 400)))
    add_checkpoints(client, job, steps=(400,), fid=None)
    removed = retention.collect_trash(engine_of(client), store_of(client), later(61))
    assert sorted(removed) == sorted(paths(job, 500))
    assert_every_listed_checkpoint_has_its_files(client)
    # A note left behind for a listed path (no untrash) is dropped, its file kept.
    with engine_of(client).begin() as conn:
        conn.execute(insert(ArtifactTrash).values(path=paths(job, 400)[0], delete_after=utcnow()))
    assert retention.collect_trash(engine_of(client), store_of(client), later(1)) == []
    assert trash(client) == {} and store_of(client).exists(paths(job, 400)[0])
    assert_every_listed_checkpoint_has_its_files(client)


# ---- bytes ---------------------------------------------------------------------------------


def test_jobs_report_their_artifact_bytes_and_metrics_totals_them(client: TestClient) -> None:
    job = new_job(client)
    other = new_job(client)
    add_checkpoints(client, job, steps=(100, 200))
    with engine_of(client).begin() as conn:
        conn.execute(insert(Sample).values(job_id=job, step=100, path="x.png", size=321))
        conn.execute(insert(Sample).values(job_id=job, step=200, path="y.png", size=None))
    expected = (1100 + 13) + (1200 + 13) + 321  # tensors, sidecars; a sample of no size: 0
    assert client.get(f"/api/jobs/{job}").json()["artifact_bytes"] == expected
    assert client.get(f"/api/jobs/{other}").json()["artifact_bytes"] == 0
    page = {j["id"]: j["artifact_bytes"] for j in client.get("/api/jobs").json()["items"]}
    assert page == {job: expected, other: 0}
    assert client.post(f"/api/jobs/{other}/cancel").json()["artifact_bytes"] == 0
    upload = client.post("/api/datasets", files={"file": ("d.npy", _npy())})
    assert upload.status_code == 201, upload.text
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    gauge = families["ganforge_artifact_bytes"]
    assert gauge.type == "gauge"
    values = {s.labels["kind"]: s.value for s in gauge.samples}
    assert values == {
        "checkpoint": 1100 + 13 + 1200 + 13,
        "sample": 321,
        "dataset": upload.json()["size"],
    }
    assert client.delete(f"/api/jobs/{job}/checkpoints/100").status_code == 204
    assert client.get(f"/api/jobs/{job}").json()["artifact_bytes"] == expected - 1113


def _npy() -> bytes:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.zeros((8, 2), dtype=np.float32))
    return buffer.getvalue()


def test_a_bad_retention_is_a_422_naming_the_field(client: TestClient) -> None:
    for retention_, field in (
        ({"mode": "best"}, "spec.retention.mode"),
        ({"keep_last": -2}, "spec.retention.keep_last"),
        ({"best_metric": "not a metric!"}, "spec.retention.best_metric"),
    ):
        answer = client.post("/api/jobs", json={"spec": {"retention": retention_}})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["field"] == field, answer.text
