"""GANFORGE_LOG_FORMAT: `ganforge up` (supervisor, API, worker, a job's process) writes one
JSON object per line in json, readable text by default; a job's lifecycle lines appear once
each with its id."""

from __future__ import annotations

import json
import logging
from collections import Counter
from datetime import datetime
from typing import Any

from tests.service.conftest import Service, running_service, tiny_spec

KEYS = {"time", "level", "logger", "message"}


def _run_one_job(service: Service) -> str:
    with service.client() as client:
        made = client.post("/api/jobs", json={"spec": tiny_spec()})
        assert made.status_code == 201, made.text
        job_id = str(made.json()["id"])
        assert service.wait_for(job_id, ("succeeded", "failed"))["status"] == "succeeded"
        client.get("/api/health")  # an access line after the job
    return job_id


def _wait_for_line(service: Service, needle: str) -> str:
    import time

    deadline = time.monotonic() + 10
    while needle not in (text := service.log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return text


def test_json_logs_are_one_object_per_line_with_each_lifecycle_event_once(tmp_path):
    env = {"GANFORGE_LOG_FORMAT": "json", "GANFORGE_SIMULATE_GPUS": "1"}
    # A (simulated) GPU worker: the job trains in a job process of its own.
    with running_service(tmp_path, env_overrides=env, gpus=["0"]) as service:
        job_id = _run_one_job(service)
        text = _wait_for_line(service, '"GET /api/health')
    records: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)  # every line: one JSON object
        assert isinstance(record, dict) and KEYS <= set(record), (number, line)
        assert datetime.fromisoformat(record["time"]).utcoffset().total_seconds() == 0
        assert record["level"] in logging.getLevelNamesMapping(), line
        records.append(record)
    loggers = {r["logger"] for r in records}
    # The supervisor, the API (uvicorn's own loggers), Celery's and ours.
    assert {"ganforge.supervisor", "uvicorn.error", "uvicorn.access", "ganforge.worker"} <= loggers
    assert any(name.startswith("celery.") for name in loggers), loggers
    access = [r for r in records if r["logger"] == "uvicorn.access"]
    assert any(r["path"] == "/api/health" and r["status"] == 200 for r in access)
    events = Counter(
        (r["event"], r.get("step")) for r in records if r.get("job_id") == job_id and "event" in r
    )
    assert events == {
        ("claimed", None): 1,
        ("checkpointed", 20): 1,
        ("checkpointed", 40): 1,
        ("finished", None): 1,
    }, events
    finished = next(r for r in records if r.get("event") == "finished")
    assert finished["status"] == "succeeded" and finished["logger"] == "ganforge.worker"
    claimed = next(r for r in records if r.get("event") == "claimed")
    assert claimed["devices"] == ["0"] and claimed["worker"]
    # The job process's own lines carry the job id too.
    assert any(
        "CUDA_VISIBLE_DEVICES" in r["message"] and r.get("job_id") == job_id for r in records
    )


def test_the_default_log_format_is_readable_text(tmp_path):
    with running_service(tmp_path) as service:
        job_id = _run_one_job(service)
        text = _wait_for_line(service, "GET /api/health")
    lines = [line for line in text.splitlines() if line.strip()]
    assert not any(line.lstrip().startswith("{") for line in lines), text[-2000:]
    assert any(line.startswith("ganforge is up: dashboard") for line in lines)
    assert any(f"job {job_id} claimed by" in line and "INFO/MainProcess" in line for line in lines)
    assert any(f"job {job_id} succeeded at step 40" in line for line in lines)
    assert any('"GET /api/health HTTP/1.1" 200' in line for line in lines)
