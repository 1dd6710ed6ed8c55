"""End to end through real processes: `ganforge up` (API + Celery worker), HTTP only.

Each test runs on SQLite + the embedded broker and on PostgreSQL + Redis (the `service`
fixture). Nothing runs eagerly: every job goes through the broker to the worker process.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import time
import zipfile

import numpy as np

from app.queue import enqueue
from app.settings import Settings
from tests.service.conftest import ROOT, tiny_spec
from trainer.spec import TrainSpec

PNG = b"\x89PNG\r\n\x1a\n"


def test_a_job_runs_to_success_and_its_artifacts_come_back_over_http(service):
    with service.client() as client:
        made = client.post("/api/jobs", json={"spec": tiny_spec(), "tags": ["e2e"]})
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]
        job = service.wait_for(job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded", job
        assert job["step"] == 40 and job["attempt"] == 1 and job["error"] is None
        assert job["started_at"] and job["finished_at"]

        metrics = client.get(f"/api/jobs/{job_id}/metrics").json()["series"]
        assert metrics["loss/d"]["step"] == list(range(5, 41, 5))
        assert metrics["audit/leak_d"]["value"] == [0.0] * 8
        assert {"loss/g", "d/real", "grad_norm/g", "perf/steps_per_s", "eval/modes"} <= set(metrics)

        samples = client.get(f"/api/jobs/{job_id}/samples").json()["items"]
        assert [s["step"] for s in samples] == [20, 40]
        png = client.get(samples[0]["url"])
        assert png.status_code == 200 and png.content.startswith(PNG)
        archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job_id}/samples.zip").content))
        assert sorted(archive.namelist()) == ["step_000020.png", "step_000040.png"]

        checkpoints = client.get(f"/api/jobs/{job_id}/checkpoints").json()["items"]
        assert [c["step"] for c in checkpoints] == [20, 40]
        for ckpt in checkpoints:
            body = client.get(ckpt["url"]).content
            assert hashlib.sha256(body).hexdigest() == ckpt["sha256"] and len(body) == ckpt["size"]

        generated = client.post(f"/api/jobs/{job_id}/generate", json={"n": 300, "format": "npy"})
        assert generated.status_code == 200, generated.text
        array = np.load(io.BytesIO(generated.content), allow_pickle=False)
        assert array.shape == (300, 2) and np.isfinite(array).all()

        listed = client.get("/api/jobs", params={"tag": "e2e", "status": "succeeded"}).json()
        assert job_id in [j["id"] for j in listed["items"]]
        prometheus = client.get("/metrics").text
        assert 'ganforge_jobs{status="succeeded"}' in prometheus


def test_cancel_a_running_job_within_2_s_then_the_worker_runs_the_next(service):
    with service.client() as client:
        long = client.post("/api/jobs", json={"spec": tiny_spec(steps=1_000_000)}).json()
        job = service.wait_for(long["id"], ("running",), timeout=60)
        while job["step"] < 5:
            job = client.get(f"/api/jobs/{long['id']}").json()
            time.sleep(0.05)
        asked = time.monotonic()
        answer = client.post(f"/api/jobs/{long['id']}/cancel")
        assert answer.status_code == 200 and answer.json()["status"] == "cancelling"
        job = service.wait_for(long["id"], ("cancelled", "failed", "succeeded"), timeout=10)
        took = time.monotonic() - asked
        assert job["status"] == "cancelled" and took < 2.0, (job, took)
        assert client.post(f"/api/jobs/{long['id']}/cancel").status_code == 409
        # The run stopped with a checkpoint at the step it reached.
        steps = [
            c["step"] for c in client.get(f"/api/jobs/{long['id']}/checkpoints").json()["items"]
        ]
        assert steps and steps[-1] == job["step"]

        following = client.post("/api/jobs", json={"spec": tiny_spec(seed=1)}).json()
        assert service.wait_for(following["id"], ("succeeded", "failed"))["status"] == "succeeded"
        assert client.delete(f"/api/jobs/{long['id']}").status_code == 204
        assert client.get(f"/api/jobs/{long['id']}").status_code == 404


def test_the_same_job_id_sent_twice_runs_once(service):
    settings = Settings(
        database_url=service.env["GANFORGE_DATABASE_URL"],
        broker_url=service.env["GANFORGE_BROKER_URL"],
        queue_prefix=service.env["GANFORGE_QUEUE_PREFIX"],
    )
    with service.client() as client:
        job_id = client.post("/api/jobs", json={"spec": tiny_spec(seed=2)}).json()["id"]
        enqueue(settings, job_id, TrainSpec())  # a second delivery of the same id
        job = service.wait_for(job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded" and job["attempt"] == 1
        # Both messages are consumed; the second found the job taken and did nothing.
        deadline = time.monotonic() + 10
        while _queue_depth(client) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _queue_depth(client) == 0
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["attempt"] == 1 and job["status"] == "succeeded"
        series = client.get(f"/api/jobs/{job_id}/metrics", params={"names": "loss/d"}).json()
        assert series["series"]["loss/d"]["step"] == list(range(5, 41, 5))


def _queue_depth(client) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ganforge_queue_depth{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_resume_continues_a_cancelled_job_from_its_checkpoint(service):
    spec = tiny_spec(steps=1500, every={"metrics": 5, "samples": 500, "checkpoint": 500, "eval": 0})
    with service.client() as client:
        job_id = client.post("/api/jobs", json={"spec": spec}).json()["id"]
        job = service.wait_for(job_id, ("running",), timeout=60)
        while job["step"] < 10:
            job = client.get(f"/api/jobs/{job_id}").json()
            time.sleep(0.02)
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
        stopped = service.wait_for(job_id, ("cancelled", "succeeded"), timeout=10)
        assert stopped["status"] == "cancelled" and stopped["step"] < 1500
        resumed = client.post(f"/api/jobs/{job_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "queued"
        job = service.wait_for(job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded" and job["attempt"] == 2 and job["step"] == 1500
        steps = client.get(f"/api/jobs/{job_id}/metrics", params={"names": "loss/d"}).json()
        assert steps["series"]["loss/d"]["step"] == list(range(5, 1501, 5))  # no gaps, no repeats
        assert client.post(f"/api/jobs/{job_id}/resume").status_code == 409


def test_events_stream_progress_metrics_samples_and_the_end(service):
    with service.client() as client:
        job_id = client.post("/api/jobs", json={"spec": tiny_spec(seed=3)}).json()["id"]
        seen: dict[str, list] = {}
        with client.stream("GET", f"/api/jobs/{job_id}/events", timeout=120) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            event = "message"
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    seen.setdefault(event, []).append(json.loads(line[5:]))
        assert seen["end"] == [{"status": "succeeded"}]
        assert seen["job"][0]["id"] == job_id and seen["job"][-1]["status"] == "succeeded"
        steps = [s for batch in seen["metrics"] for s in batch["loss/d"]["step"]]
        assert steps == list(range(5, 41, 5))
        assert [s["step"] for s in seen["sample"]] == [20, 40]
        assert seen["progress"][-1]["step"] == 40


def test_submit_watch_follows_a_job_and_its_exit_status_says_how_it_ended(service, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(tiny_spec(seed=4)))
    done = _ganforge(service, "submit", str(good), "--watch")
    assert done.returncode == 0, done.stderr
    assert "succeeded at step 40" in done.stdout

    # A dataset of 2-D points with the image model: accepted by the API, fails in the worker.
    data = tmp_path / "points.npy"
    np.save(data, np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32))
    with service.client() as client, data.open("rb") as fh:
        uploaded = client.post("/api/datasets", files={"file": ("points.npy", fh)})
        assert uploaded.status_code == 201, uploaded.text
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            tiny_spec(
                data={"kind": "array", "dataset_id": uploaded.json()["id"]}, model={"kind": "conv"}
            )
        )
    )
    failed = _ganforge(service, "submit", str(bad), "--watch")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert "failed" in failed.stdout and "model.kind" in failed.stdout

    invalid = tmp_path / "invalid.json"
    invalid.write_text(json.dumps({"accumulation": {"steps": 3}}))
    rejected = _ganforge(service, "submit", str(invalid))
    assert rejected.returncode == 2 and "accumulation.steps" in rejected.stderr


def _ganforge(service, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args, "--server", service.url],
        cwd=ROOT,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_two_rank_job_finishes_with_one_set_of_metrics_and_checkpoints(service):
    """distributed.world_size 2 (gloo on CPU): the worker is rank 0 and starts rank 1; the
    job reads like any other: each metric step, sample and checkpoint once."""
    spec = tiny_spec(distributed={"world_size": 2}, accumulation={"steps": 2}, device="cpu")
    with service.client() as client:
        made = client.post("/api/jobs", json={"spec": spec})
        assert made.status_code == 201, made.text
        job_id = made.json()["id"]
        job = service.wait_for(job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded" and job["step"] == 40, job
        metrics = client.get(f"/api/jobs/{job_id}/metrics").json()["series"]
        assert metrics["loss/d"]["step"] == list(range(5, 41, 5))
        assert metrics["audit/leak_g"]["value"] == [0.0] * 8
        assert [s["step"] for s in client.get(f"/api/jobs/{job_id}/samples").json()["items"]] == [
            20,
            40,
        ]
        checkpoints = client.get(f"/api/jobs/{job_id}/checkpoints").json()["items"]
        assert [c["step"] for c in checkpoints] == [20, 40]
        # Any world size resumes it: the checkpoint holds one copy of the state.
        generated = client.post(f"/api/jobs/{job_id}/generate", json={"n": 10, "format": "npy"})
        assert generated.status_code == 200
        assert np.load(io.BytesIO(generated.content)).shape == (10, 2)
