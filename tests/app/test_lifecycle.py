"""Job lifecycle over the API and the state transitions under it, on SQLite and PostgreSQL.

No worker runs here: these check the API's answers and the conditional updates that the
worker relies on (the end-to-end runs are in tests/service).
"""

from __future__ import annotations

import json

from sqlalchemy import select

from app import jobs
from app.models import Job


def _job(client, **body) -> dict:
    made = client.post("/api/jobs", json={"spec": {"steps": 10}, **body})
    assert made.status_code == 201, made.text
    return made.json()


def test_every_job_endpoint_is_a_404_for_an_unknown_job(client):
    for method, path in [
        ("POST", "/api/jobs/nope/cancel"),
        ("POST", "/api/jobs/nope/resume"),
        ("DELETE", "/api/jobs/nope"),
        ("GET", "/api/jobs/nope/events"),
        ("GET", "/api/jobs/nope/metrics"),
        ("GET", "/api/jobs/nope/samples"),
        ("GET", "/api/jobs/nope/samples.zip"),
        ("GET", "/api/jobs/nope/checkpoints"),
        ("GET", "/api/jobs/nope/checkpoints/10"),
    ]:
        answer = client.request(method, path)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["detail"] == "job nope not found"
    generate = client.post("/api/jobs/nope/generate", json={"n": 4})
    assert generate.status_code == 404


def test_cancel_a_queued_job_then_resume_and_delete_rules(client):
    job = _job(client)
    # Still queued (no worker): resuming or deleting it is a conflict.
    resume = client.post(f"/api/jobs/{job['id']}/resume")
    assert resume.status_code == 409 and "queued" in resume.json()["detail"]
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 409
    cancelled = client.post(f"/api/jobs/{job['id']}/cancel")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled" and cancelled.json()["finished_at"]
    again = client.post(f"/api/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    # A cancelled job can be resumed (queued again) and then cancelled again.
    resumed = client.post(f"/api/jobs/{job['id']}/resume")
    assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
    assert resumed.json()["finished_at"] is None
    assert client.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 204
    assert client.get(f"/api/jobs/{job['id']}").status_code == 404
    assert client.delete(f"/api/jobs/{job['id']}").status_code == 404


def test_a_job_cannot_name_a_local_path_or_an_unknown_dataset(client):
    path = client.post(
        "/api/jobs", json={"spec": {"data": {"kind": "array", "path": "/etc/passwd"}}}
    )
    assert path.status_code == 422
    assert path.json()["detail"][0]["field"] == "spec.data.path"
    missing = client.post(
        "/api/jobs", json={"spec": {"data": {"kind": "array", "dataset_id": "nope"}}}
    )
    assert missing.status_code == 422
    detail = missing.json()["detail"][0]
    assert detail["field"] == "spec.data.dataset_id" and "no dataset nope" in detail["message"]


def test_events_of_a_finished_job_send_it_and_end(client):
    job = _job(client)
    client.post(f"/api/jobs/{job['id']}/cancel")
    with client.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
        assert stream.status_code == 200
        text = "".join(stream.iter_text())
    assert "event: job" in text and '"status":"cancelled"' in text.replace(" ", "")
    assert text.count("event: job") == 1 and text.count("event: end") == 1
    assert text.rstrip().endswith('event: end\ndata: {"status": "cancelled"}\nid: -1:0')


def test_prometheus_metrics_count_jobs_by_status(client):
    _job(client)
    cancelled = _job(client)
    client.post(f"/api/jobs/{cancelled['id']}/cancel")
    text = client.get("/metrics").text
    assert 'ganforge_jobs{status="queued"} 1.0' in text
    assert 'ganforge_jobs{status="cancelled"} 1.0' in text
    assert 'ganforge_queue_depth{queue="cpu"}' in text


def test_transitions_are_conditional_so_two_parties_cannot_both_win(client):
    job = _job(client)
    engine = client.app.state.sessions.kw["bind"]
    with engine.begin() as conn:
        assert jobs.claim(conn, job["id"], "worker-a")
    with engine.begin() as conn:
        assert not jobs.claim(conn, job["id"], "worker-b")  # a second delivery
        assert jobs.heartbeat(conn, job["id"], "worker-b", 3) is None  # not its lease
        assert jobs.heartbeat(conn, job["id"], "worker-a", 3) == "running"
    assert client.post(f"/api/jobs/{job['id']}/cancel").json()["status"] == "cancelling"
    with engine.begin() as conn:
        assert jobs.heartbeat(conn, job["id"], "worker-a", 4) == "cancelling"
        assert not jobs.finish(conn, job["id"], "worker-b", "succeeded", 4)
        assert jobs.finish(conn, job["id"], "worker-a", "cancelled", 4)
        assert jobs.heartbeat(conn, job["id"], "worker-a", 5) is None  # lease released
        row = conn.execute(select(Job.status, Job.step, Job.attempt, Job.lease_owner)).one()
    assert tuple(row) == ("cancelled", 4, 1, None)


def test_a_worker_shutting_down_requeues_its_job_unless_it_was_being_cancelled(client):
    running, cancelling = _job(client), _job(client)
    engine = client.app.state.sessions.kw["bind"]
    with engine.begin() as conn:
        assert jobs.claim(conn, running["id"], "w")
        assert jobs.claim(conn, cancelling["id"], "w")
    client.post(f"/api/jobs/{cancelling['id']}/cancel")
    with engine.begin() as conn:
        assert jobs.release(conn, running["id"], "w", 7)
        assert not jobs.release(conn, cancelling["id"], "w", 8)
    assert client.get(f"/api/jobs/{running['id']}").json()["status"] == "queued"
    assert client.get(f"/api/jobs/{cancelling['id']}").json()["status"] == "cancelled"


def test_queues_by_device_and_the_worker_settings_the_service_relies_on():
    from app.queue import celery_config, queue_for, worker_queues
    from app.settings import Settings
    from trainer.spec import TrainSpec

    settings = Settings(queue_prefix="lab-")
    assert queue_for(settings, TrainSpec(device="cuda")) == "lab-gpu"
    assert queue_for(settings, TrainSpec(device="auto")) == "lab-cpu"
    assert worker_queues(settings, 1) == ["lab-gpu", "lab-cpu"]
    assert worker_queues(settings, 0) == ["lab-cpu"]
    config = celery_config(Settings(broker_url="redis://127.0.0.1:6379/0"))
    assert config["worker_prefetch_multiplier"] == 1 and config["task_acks_late"]
    assert config["broker_transport_options"]["visibility_timeout"] >= 24 * 3600


def test_events_start_after_what_the_page_already_has(client):
    from app.metricstore import insert_points

    job = _job(client)
    engine = client.app.state.sessions.kw["bind"]
    with engine.begin() as conn:
        insert_points(conn, job["id"], [("loss/d", s, float(s)) for s in (5, 10, 15, 20)])
    client.post(f"/api/jobs/{job['id']}/cancel")
    for query, steps in (("", [5, 10, 15, 20]), ("?since_step=10", [15, 20])):
        with client.stream("GET", f"/api/jobs/{job['id']}/events{query}") as stream:
            lines = [ln for ln in stream.iter_lines() if ln.startswith("data:")]
        metrics = [json.loads(ln[5:]) for ln in lines if "loss/d" in ln]
        assert [s for m in metrics for s in m["loss/d"]["step"]] == steps
    bad = client.get(f"/api/jobs/{job['id']}/events?since_step=-5")
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "since_step"
