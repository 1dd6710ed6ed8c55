"""/metrics counts and times the API's own requests by route template: one series per route,
however many job ids are asked for; paths no route matches and odd methods fold into one
label value each; requests the host guard refuses count too. promtool accepts the page."""

from __future__ import annotations

import subprocess
import uuid

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.api import create_app
from app.db import make_engine
from app.settings import Settings
from tests.services import require_tool


def _series(text: str, name: str) -> dict[str, float]:
    """The samples called `name`, keyed `method="GET",route="...",status="200"`."""
    return {
        ",".join(f'{key}="{value}"' for key, value in sample.labels.items()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_many_job_ids_make_one_series_per_route_and_status(client):
    job_ids = [f"job-{uuid.uuid4().hex}" for _ in range(200)]
    for job_id in job_ids:
        assert client.get(f"/api/jobs/{job_id}").status_code == 404
        assert client.get(f"/api/jobs/{job_id}/metrics").status_code == 404
    for n in range(50):
        assert client.get(f"/no/such/page/{n}").status_code == 404
    text = client.get("/metrics").text
    assert not any(job_id in text for job_id in job_ids)
    assert "/no/such/page" not in text
    requests = _series(text, "ganforge_http_requests_total")
    assert requests['method="GET",route="/api/jobs/{job_id}",status="404"'] == 200
    assert requests['method="GET",route="/api/jobs/{job_id}/metrics",status="404"'] == 200
    assert requests['method="GET",route="unmatched",status="404"'] == 50
    # 450 requests, a handful of series: bounded by routes x methods x statuses.
    assert len(requests) <= 4, requests
    counts = _series(text, "ganforge_http_request_duration_seconds_count")
    assert counts['method="GET",route="/api/jobs/{job_id}"'] == 200
    buckets = _series(text, "ganforge_http_request_duration_seconds_bucket")
    assert buckets['le="+Inf",method="GET",route="/api/jobs/{job_id}"'] == 200


def test_statuses_methods_and_static_files_are_labelled_by_template(client):
    assert client.get("/api/health/live").status_code == 200
    assert client.post("/api/jobs", json={"spec": {"steps": -1}}).status_code == 422
    assert client.request("BREW", "/api/jobs").status_code == 405
    assert client.delete("/api/health").status_code == 405
    assert client.get("/static/css/app.css").status_code == 200
    assert client.get("/static/css/none.css").status_code == 404
    requests = _series(client.get("/metrics").text, "ganforge_http_requests_total")
    for labels in (
        'method="GET",route="/api/health/live",status="200"',
        'method="POST",route="/api/jobs",status="422"',
        'method="other",route="/api/jobs",status="405"',
        'method="DELETE",route="/api/health",status="405"',
        'method="GET",route="/static/{path}",status="200"',
        'method="GET",route="/static/{path}",status="404"',
    ):
        assert requests.get(labels) == 1, (labels, requests)
    # The scrape itself is counted once it has been answered: the next page shows it.
    again = _series(client.get("/metrics").text, "ganforge_http_requests_total")
    assert again['method="GET",route="/metrics",status="200"'] >= 1


def test_a_request_the_host_guard_refuses_is_counted(database_url, tmp_path):
    settings = Settings(
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_dir=tmp_path / "artifacts",
        allowed_hosts="localhost",
    )
    engine = make_engine(database_url)
    with TestClient(create_app(settings, engine), base_url="http://localhost") as client:
        refused = client.get("/api/jobs", headers={"host": "evil.example"})
        assert refused.status_code == 400
        requests = _series(client.get("/metrics").text, "ganforge_http_requests_total")
    engine.dispose()
    assert requests['method="GET",route="/api/jobs",status="400"'] == 1


def test_promtool_accepts_the_metrics_page(client, tmp_path):
    promtool = require_tool("/usr/bin/promtool", "apt-get install prometheus")
    for _ in range(3):
        client.get("/api/jobs")
    client.get("/api/jobs/nope")
    page = client.get("/metrics")
    assert page.status_code == 200
    assert "ganforge_http_request_duration_seconds_bucket" in page.text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=page.text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_liveness_answers_while_the_database_is_unreachable(tmp_path):
    gone = f"sqlite:///{tmp_path / 'no-such-dir' / 'ganforge.db'}"
    settings = Settings(
        database_url=gone,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_dir=tmp_path / "artifacts",
    )
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        assert client.get("/api/health/live").json() == {"status": "ok"}
        health = client.get("/api/health")
    assert health.status_code == 503
    assert health.json()["database"].startswith("unreachable")
