"""GPUs in the database (app.devices) and how jobs are routed to workers with enough of them,
on SQLite and PostgreSQL. No worker runs here (tests/service/test_devices.py runs them)."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from app import devices, jobs
from app.models import DeviceLease, Job, utcnow
from app.queue import queue_depth, queue_for, queue_name, stored_queue, worker_queues
from app.reconcile import reconcile
from app.settings import Settings
from trainer.spec import TrainSpec

LEASE = timedelta(seconds=60)


def _engine(client) -> Engine:
    engine: Engine = client.app.state.sessions.kw["bind"]
    return engine


def _submit(client, **spec) -> dict:
    made = client.post("/api/jobs", json={"spec": {"steps": 10, **spec}})
    assert made.status_code == 201, made.text
    return made.json()


def _take(engine: Engine, job_id: str, count: int, pool=("0", "1", "2"), host="box", now=None):
    now = now or utcnow()
    with engine.begin() as conn:
        return devices.take(
            conn,
            host=host,
            devices=pool,
            count=count,
            job_id=job_id,
            owner=f"owner-{job_id}",
            expires_at=now + LEASE,
            now=now,
        )


def test_queues_by_gpus_and_what_a_worker_with_n_devices_consumes():
    settings = Settings(queue_prefix="lab-")
    assert [queue_name(settings, n) for n in (0, 1, 2, 4)] == [
        "lab-cpu",
        "lab-gpu",
        "lab-gpu2",
        "lab-gpu4",
    ]
    assert queue_for(settings, TrainSpec(device="cuda", distributed={"world_size": 2})) == (
        "lab-gpu2"
    )
    assert queue_for(settings, TrainSpec(resources={"gpus": 3})) == "lab-gpu3"
    assert queue_for(settings, TrainSpec(device="cuda:0")) == "lab-gpu"
    assert queue_for(settings, TrainSpec()) == "lab-cpu"  # auto
    # A stored spec from before `resources` existed routes the same way.
    assert stored_queue(settings, {"device": "cuda", "distributed": {"world_size": 2}}) == (
        "lab-gpu2"
    )
    assert worker_queues(settings, 3) == ["lab-gpu3", "lab-gpu2", "lab-gpu", "lab-cpu"]
    assert worker_queues(settings, 0) == ["lab-cpu"]


def test_a_job_gets_devices_no_other_job_holds_until_it_lets_them_go(client):
    engine = _engine(client)
    a, b, c = (_submit(client, device="cuda")["id"] for _ in range(3))
    assert _take(engine, a, 2) == ["0", "1"]
    assert _take(engine, b, 2) is None  # one left
    assert _take(engine, b, 1) == ["2"]
    assert _take(engine, c, 1) is None
    with engine.begin() as conn:
        devices.release(conn, a, "someone-else")  # not its run: nothing happens
    assert _take(engine, c, 1) is None
    with engine.begin() as conn:
        devices.release(conn, a, f"owner-{a}")
    assert _take(engine, c, 2) == ["0", "1"]
    assert _take(engine, a, 1, host="other-box") == ["0"]  # another machine's device 0


def test_leases_share_the_jobs_lease_extended_released_and_expired_with_it(client):
    engine = _engine(client)
    job = _submit(client, device="cuda", distributed={"world_size": 2})["id"]
    with engine.begin() as conn:
        now = utcnow()
        taken = devices.take(
            conn,
            host="box",
            devices=["0", "1"],
            count=2,
            job_id=job,
            owner="w",
            expires_at=now + timedelta(seconds=2),
            now=now,
        )
        assert taken == ["0", "1"]
        assert jobs.claim(conn, job, "w", timedelta(seconds=2), devices=taken, worker="box:1:x")
    with engine.begin() as conn:
        assert jobs.heartbeat(conn, job, "w", 3, LEASE) == "running"
        expiry = conn.scalars(select(DeviceLease.expires_at)).all()
    assert len(expiry) == 2 and all(e > utcnow() + timedelta(seconds=50) for e in expiry)
    answer = client.get(f"/api/jobs/{job}").json()
    assert answer["devices"] == ["0", "1"] and answer["worker"] == "box:1:x"

    # The worker dies: past the lease, its devices are free to others at once...
    later = utcnow() + 2 * LEASE
    other = _submit(client, device="cuda")["id"]
    assert _take(engine, other, 1, pool=("1",), now=later) == ["1"]
    # ...and the reconciler's requeue of the job drops what is left of its leases.
    with engine.begin() as conn:
        assert jobs.requeue_expired(conn, job, later) == "queued"
        left = conn.execute(select(DeviceLease.job_id, DeviceLease.device)).all()
    assert [tuple(r) for r in left] == [(other, "1")]

    with engine.begin() as conn:
        assert jobs.claim(conn, job, "w2", LEASE, devices=["0"])
        conn.execute(update(Job).where(Job.id == job).values(lease_expires_at=utcnow() + LEASE))
    assert _take(engine, job, 0) == []  # none needed, none taken
    with engine.begin() as conn:
        now = utcnow()
        devices.take(
            conn,
            host="box",
            devices=["0"],
            count=1,
            job_id=job,
            owner="w2",
            expires_at=now + LEASE,
            now=now,
        )
        assert jobs.finish(conn, job, "w2", "succeeded", 10)
        assert conn.scalars(select(DeviceLease.job_id)).all() == [other]
    finished = client.get(f"/api/jobs/{job}").json()
    assert finished["devices"] == ["0"] and finished["worker"] == "w2"  # kept after the end


def test_two_workers_taking_one_device_at_the_same_moment_never_both_get_it(client):
    """Eight claims race for two devices, each in its own transaction; the primary key
    lets one job have each device (a loser's claim rolls back and looks again)."""
    engine = _engine(client)
    ids = [_submit(client, device="cuda")["id"] for _ in range(8)]
    start = threading.Barrier(len(ids))
    got: dict[str, list[str] | None] = {}

    def claim(job_id: str) -> None:
        start.wait()
        for _ in range(20):
            try:
                got[job_id] = _take(engine, job_id, 1, pool=("0", "1"))
                return
            except IntegrityError:
                continue
        raise AssertionError("never settled")

    threads = [threading.Thread(target=claim, args=(job_id,)) for job_id in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    winners = {job_id: d for job_id, d in got.items() if d is not None}
    assert len(got) == 8 and len(winners) == 2, got
    assert sorted(d for taken in winners.values() for d in taken) == ["0", "1"]
    with engine.connect() as conn:
        rows = conn.execute(select(DeviceLease.device, DeviceLease.job_id)).all()
    assert {row.device: row.job_id for row in rows} == {
        taken[0]: job_id for job_id, taken in winners.items()
    }


def test_health_and_metrics_report_each_hosts_free_and_busy_devices(client):
    engine = _engine(client)
    now = utcnow()
    with engine.begin() as conn:
        devices.register(conn, worker="a:1:x", host="a", devices=["0", "1"], now=now)
        devices.register(conn, worker="a:2:y", host="a", devices=["1", "2"], now=now)
        devices.register(conn, worker="b:1:z", host="b", devices=["GPU-5e1f"], now=now)
        # A worker not heard from for longer than a lease is gone.
        devices.register(conn, worker="c:1:w", host="c", devices=["0"], now=now - 2 * LEASE)
    job = _submit(client, device="cuda")["id"]
    assert _take(engine, job, 1, pool=("1",), host="a") == ["1"]

    health = client.get("/api/health").json()
    assert health["devices"] == {
        "a": {"total": 3, "free": 2, "busy": 1},
        "b": {"total": 1, "free": 1, "busy": 0},
    }
    text = client.get("/metrics").text
    for line in (
        'ganforge_devices{host="a",state="free"} 2.0',
        'ganforge_devices{host="a",state="busy"} 1.0',
        'ganforge_devices{host="b",state="free"} 1.0',
        'ganforge_device_busy{device="1",host="a"} 1.0',
        'ganforge_device_busy{device="0",host="a"} 0.0',
        'ganforge_device_busy{device="GPU-5e1f",host="b"} 0.0',
        # the queues a 2-device worker consumes, and the queued job's
        'ganforge_queue_depth{queue="gpu2"} 0.0',
        'ganforge_queue_depth{queue="gpu"} 1.0',
    ):
        assert line in text, line
    assert 'host="c"' not in text

    with engine.begin() as conn:
        devices.unregister(conn, "a:2:y")
        devices.release(conn, job)
    assert client.get("/api/health").json()["devices"]["a"] == {"total": 2, "free": 2, "busy": 0}


def test_the_job_records_no_worker_until_one_runs_it(client):
    job = _submit(client)
    assert job["worker"] is None and job["devices"] is None
    assert job["spec"]["resources"] == {"gpus": None}


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ({"device": "cpu", "resources": {"gpus": 2}}, "device cpu uses no GPU"),
        ({"device": "cuda", "resources": {"gpus": 0}}, "needs at least 1 GPU"),
    ],
)
def test_an_impossible_gpu_count_is_a_422_naming_the_field(client, spec, reason):
    for path in ("/api/jobs", "/api/specs/validate"):
        answer = client.post(path, json={"spec": spec})
        assert answer.status_code == 422, answer.text
        (detail,) = answer.json()["detail"]
        assert detail["field"] == "spec.resources.gpus" and reason in detail["message"]


def test_the_reconciler_counts_messages_on_gpu_n_queues(client):
    """A 2-GPU job waits on `gpu2` for a big enough worker: its message is there, so the
    reconciler must not send it again (it only looked at `gpu` and `cpu` before)."""
    engine = _engine(client)
    settings = client.app.state.settings
    job = _submit(client, device="cuda", distributed={"world_size": 2})["id"]
    with engine.begin() as conn:
        conn.execute(
            update(Job).where(Job.id == job).values(queued_at=utcnow() - timedelta(hours=1))
        )
    assert queue_depth(settings, ["gpu2"])["gpu2"] == 1
    assert reconcile(engine, settings).resent == []
    assert queue_depth(settings, ["gpu2"])["gpu2"] == 1
