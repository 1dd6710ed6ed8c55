"""Priorities schedule, end to end: `ganforge up` with one worker runs queued jobs highest
priority first, whatever order their messages came in, on SQLite + the embedded broker and on
PostgreSQL + Redis (the `service` fixture)."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.service.conftest import ROOT, tiny_spec


def test_one_worker_runs_queued_jobs_by_priority_and_a_patch_reorders_them(service, tmp_path):
    with service.client() as client:
        blocker = client.post("/api/jobs", json={"spec": tiny_spec(steps=1_000_000)}).json()
        service.wait_for(blocker["id"], ("running",), timeout=60)
        # Submitted in the wrong order: the broker delivers low's message first. `mid` goes
        # through `ganforge submit --priority`.
        queued = {}
        for name, priority in (("low", 0), ("high", 10), ("mid", 5), ("raised", -5)):
            spec = tiny_spec(steps=30, seed=priority + 50)
            if name == "mid":
                queued[name] = _ganforge_submit(service, tmp_path, spec, priority)
                continue
            answer = client.post("/api/jobs", json={"spec": spec, "priority": priority})
            assert answer.status_code == 201, answer.text
            queued[name] = answer.json()["id"]
        assert client.get(f"/api/jobs/{queued['mid']}").json()["priority"] == 5

        raised = client.patch(f"/api/jobs/{queued['raised']}", json={"priority": 20})
        assert raised.status_code == 200, raised.text
        assert raised.json()["priority"] == 20 and raised.json()["status"] == "queued"
        refused = client.patch(f"/api/jobs/{blocker['id']}", json={"priority": 20})
        assert refused.status_code == 409 and "only a queued job" in refused.json()["detail"]
        assert client.patch("/api/jobs/nope", json={"priority": 1}).status_code == 404
        bad = client.patch(f"/api/jobs/{queued['low']}", json={"priority": "soon"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "priority"

        assert client.post(f"/api/jobs/{blocker['id']}/cancel").status_code == 200
        done = {
            name: service.wait_for(job_id, ("succeeded", "failed"), timeout=60)
            for name, job_id in queued.items()
        }
        assert all(job["status"] == "succeeded" for job in done.values()), done
        by_start = sorted(done, key=lambda name: done[name]["started_at"])
        assert by_start == ["raised", "high", "mid", "low"], {
            name: job["started_at"] for name, job in done.items()
        }
        # Each message woke the worker once: none is left waiting, none was lost.
        deadline = time.monotonic() + 10
        while _queue_depth(client) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _queue_depth(client) == 0


def _ganforge_submit(service, tmp_path, spec: dict, priority: int) -> str:
    path = tmp_path / "mid.json"
    path.write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", str(path), "--priority", str(priority)]
        + ["--server", service.url],
        cwd=ROOT,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[1]  # "job ID queued: URL"


def _queue_depth(client) -> float:
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("ganforge_queue_depth{"):
            total += float(line.rsplit(" ", 1)[1])
    return total
