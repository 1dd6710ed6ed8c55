"""A real Prometheus server (Debian's `prometheus`) scrapes `ganforge up`'s /metrics and
answers queries on the API's own request counters and the job gauges."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2

from tests.service.conftest import (
    Service,
    _free_port,
    running_service,
    serving_process,
    tiny_spec,
)
from tests.services import require_tool


@contextmanager
def _prometheus(target: str, workdir: Path) -> Iterator[str]:
    binary = require_tool("/usr/bin/prometheus", "apt-get install prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: ganforge\n"
        "    metrics_path: /metrics\n"
        f"    static_configs: [{{targets: ['{target}']}}]\n"
    )
    url = f"http://127.0.0.1:{_free_port()}"
    argv = [binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address={url.removeprefix('http://')}"]  # fmt: skip
    with serving_process(argv, ready=url + "/-/ready", log=workdir / "prometheus.log"):
        yield url


def _query(prometheus: str, promql: str, want: Any, timeout: float = 60) -> list[dict]:
    """Ask until `want(result)` holds (each scrape is a second apart) or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        answer = httpx2.get(prometheus + "/api/v1/query", params={"query": promql}, timeout=10)
        assert answer.status_code == 200, answer.text
        result = answer.json()["data"]["result"]
        if want(result) or time.monotonic() > deadline:
            return list(result)
        time.sleep(0.5)


def _value(result: list[dict]) -> float:
    return float(result[0]["value"][1]) if result else float("nan")


def test_prometheus_scrapes_the_api_and_queries_its_metrics_back(tmp_path):
    with running_service(tmp_path, "embedded") as service:
        target = service.url.removeprefix("http://")
        with _prometheus(target, tmp_path) as prometheus:
            _traffic(service)
            up = _query(prometheus, 'up{job="ganforge"}', lambda r: _value(r) == 1)
            assert _value(up) == 1, (up, (tmp_path / "prometheus.log").read_text()[-2000:])
            lookups = 'ganforge_http_requests_total{route="/api/jobs/{job_id}",status="404"}'
            found = _query(prometheus, lookups, lambda r: _value(r) == 30)
            assert _value(found) == 30 and found[0]["metric"]["method"] == "GET", found
            # One route label for the lookups, however many ids were asked for.
            routes = _query(
                prometheus,
                'count(count by (route) (ganforge_http_requests_total{route=~"/api/jobs/.+"}))',
                bool,
            )
            assert _value(routes) == 1, routes
            slow = _query(
                prometheus,
                "histogram_quantile(0.9, sum by (le) "
                '(ganforge_http_request_duration_seconds_bucket{route="/api/jobs/{job_id}"}))',
                bool,
            )
            assert 0 < _value(slow) < 10, slow
            done = _query(prometheus, 'ganforge_jobs{status="succeeded"}', lambda r: _value(r) == 1)
            assert _value(done) == 1, done


def _traffic(service: Service) -> None:
    with service.client() as client:
        for n in range(30):
            assert client.get(f"/api/jobs/no-such-job-{n}").status_code == 404
        made = client.post("/api/jobs", json={"spec": tiny_spec()})
        assert made.status_code == 201, made.text
        service.wait_for(str(made.json()["id"]), ("succeeded",))
