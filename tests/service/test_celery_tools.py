"""The Celery tools operators already run see ganforge's workers: `celery inspect` answers
while a job trains (the job runs in a pool thread, the consumer keeps replying), and Flower
lists the workers and the job's task. The embedded broker has no fanout exchange, so remote
control is not available there: `celery inspect` says so and fails without harming a job."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2

from tests.service.conftest import (
    ROOT,
    Service,
    _free_port,
    running_service,
    serving_process,
    tiny_spec,
)

LONG = tiny_spec(steps=200_000, every={"metrics": 50, "samples": 100_000, "checkpoint": 100_000})


def _celery(service: Service, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "worker.celery_app", *args],
        cwd=ROOT,
        env=service.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start_long_job(service: Service) -> str:
    with service.client() as client:
        made = client.post("/api/jobs", json={"spec": LONG})
        assert made.status_code == 201, made.text
        job_id = str(made.json()["id"])
    service.wait_for(job_id, ("running",), timeout=60)
    return job_id


def _cancel(service: Service, job_id: str) -> None:
    with service.client() as client:
        assert client.post(f"/api/jobs/{job_id}/cancel").status_code == 200
    service.wait_for(job_id, ("cancelled",), timeout=60)


def _active_job_ids(replies: dict[str, list[dict[str, Any]]]) -> set[str]:
    """The job ids in the running tasks' arguments (Flower gives them as a repr string)."""
    found: set[str] = set()
    for tasks in replies.values():
        for task in tasks:
            args = task["args"]
            found.update(map(str, ast.literal_eval(args) if isinstance(args, str) else args))
    return found


def test_celery_inspect_finds_the_running_job_on_its_worker(tmp_path):
    with running_service(tmp_path, "postgres+redis") as service:
        job_id = _start_long_job(service)
        # Several replies may come (a node per worker); the job is in exactly one of them.
        done = _celery(service, "inspect", "active", "--json", "--timeout", "10")
        assert done.returncode == 0, done.stdout + done.stderr
        replies = json.loads(done.stdout)
        assert job_id in _active_job_ids(replies), replies
        (node,) = [
            name for name, tasks in replies.items() if job_id in _active_job_ids({name: tasks})
        ]
        assert node.startswith("ganforge-"), node
        (task,) = replies[node]
        assert task["name"] == "ganforge.run_job" and task["id"], task
        # `inspect stats` of that worker: one job at a time, prefetch 1, the task it runs.
        asked = _celery(service, "inspect", "stats", "--json", "-t", "10", "-d", node)
        assert asked.returncode == 0, asked.stdout + asked.stderr
        stats = json.loads(asked.stdout)[node]
        assert stats["pool"]["max-concurrency"] == 1 and stats["prefetch_count"] == 1, stats
        assert stats["total"] == {"ganforge.run_job": 1}, stats
        # The worker that answered still trains: the job was not disturbed.
        with service.client() as client:
            assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"
        _cancel(service, job_id)


def _serves(worker: dict[str, Any], service: Service) -> bool:
    """Whether a worker Flower lists consumes this service's queues."""
    prefix = service.env["GANFORGE_QUEUE_PREFIX"]
    return any(q["name"].startswith(prefix) for q in worker.get("active_queues") or [])


@contextmanager
def _flower(service: Service, workdir: Path) -> Iterator[str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "flower",
            f"--port={port}", "--address=127.0.0.1", "--persistent=False"]  # fmt: skip
    env = {**service.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    with serving_process(argv, ready=url + "/healthcheck", log=workdir / "flower.log", env=env):
        yield url


def _poll(fetch: Any, ok: Any, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_flower_lists_the_worker_and_the_jobs_task(tmp_path):
    with running_service(tmp_path, "postgres+redis") as service:
        # Flower first: it sees the task's events from the moment the job is sent.
        with _flower(service, tmp_path) as flower:
            job_id = _start_long_job(service)
            with httpx2.Client(base_url=flower, timeout=30) as client:
                # Every worker (of this service, and of any other on the same Redis)...
                workers = _poll(
                    lambda: client.get("/api/workers", params={"refresh": 1}).json(),
                    lambda found: any(name.startswith("ganforge-") for name in found),
                )
                nodes = [name for name in workers if _serves(workers[name], service)]
                assert len(nodes) == 1 and nodes[0].startswith("ganforge-"), workers
                # ...and, asked about one (Flower fetches task lists per worker), its job.
                one = _poll(
                    lambda: client.get(
                        "/api/workers", params={"refresh": 1, "workername": nodes[0]}
                    ).json(),
                    lambda found: (
                        job_id
                        in _active_job_ids({nodes[0]: found.get(nodes[0], {}).get("active") or []})
                    ),
                )
                assert job_id in _active_job_ids({nodes[0]: one[nodes[0]]["active"]}), one
                assert one[nodes[0]]["stats"]["pool"]["max-concurrency"] == 1
                tasks = _poll(
                    lambda: client.get("/api/tasks").json(),
                    lambda found: any(t.get("state") == "STARTED" for t in found.values()),
                )
                ours = [t for t in tasks.values() if job_id in (t.get("args") or "")]
                assert ours and ours[0]["name"] == "ganforge.run_job", tasks
                assert ours[0]["state"] == "STARTED" and ours[0]["worker"] == nodes[0], ours
            _cancel(service, job_id)
            # The finished task reaches Flower as SUCCESS (the job was cancelled, the task ran).
            with httpx2.Client(base_url=flower, timeout=30) as client:
                uuid = ours[0]["uuid"]
                info = _poll(
                    lambda: client.get(f"/api/task/info/{uuid}").json(),
                    lambda found: found.get("state") == "SUCCESS",
                )
                assert info["state"] == "SUCCESS", info


def test_inspect_on_the_embedded_broker_fails_plainly_and_the_job_goes_on(tmp_path):
    with running_service(tmp_path, "embedded") as service:
        job_id = _start_long_job(service)
        done = _celery(service, "inspect", "active", "--timeout", "3")
        assert done.returncode != 0
        said = done.stdout + done.stderr
        assert "fanout" in said.lower() or "no nodes replied" in said.lower(), said
        with service.client() as client:
            assert client.get(f"/api/jobs/{job_id}").json()["status"] == "running"
        _cancel(service, job_id)
    assert os.path.exists(service.log)
