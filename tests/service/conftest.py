"""The whole service as a user runs it: `ganforge up` in a subprocess (API + a real Celery
worker process), once on SQLite + the embedded broker and once on PostgreSQL + Redis."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.app.conftest import _fresh_postgres
from tests.services import require_server

REDIS_URL = os.environ.get("GANFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[2]


def tiny_spec(**overrides: Any) -> dict[str, Any]:
    """A spec that trains in about a second on one CPU thread."""
    spec: dict[str, Any] = {
        "steps": 40,
        "batch_size": 64,
        "model": {"width": 32, "depth": 2, "latent_dim": 8},
        "every": {"metrics": 5, "samples": 20, "checkpoint": 20, "eval": 40},
    }
    spec.update(overrides)
    return spec


@dataclass
class Service:
    url: str
    env: dict[str, str]
    workdir: Path
    process: subprocess.Popen[bytes] | None  # None: processes the test runs itself
    log: Path

    def client(self) -> httpx2.Client:
        return httpx2.Client(base_url=self.url, timeout=30)

    def wait_for(self, job_id: str, statuses: tuple[str, ...], timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while True:
                job = client.get(f"/api/jobs/{job_id}").json()
                if job["status"] in statuses:
                    return job
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"job {job_id} still {job['status']} after {timeout} s; log:\n"
                        + self.log.read_text()[-3000:]
                    )
                time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving_process(
    argv: list[str], *, ready: str, log: Path, env: dict[str, str] | None = None
) -> Iterator[None]:
    """Run a server program (Flower, Prometheus) until the block ends; enter once `ready`
    (a URL of it) answers 200, failing with its log if it exits or takes over 60 s."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()[-3000:]
            try:
                if httpx2.get(ready, timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def _redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except Exception as exc:  # noqa: BLE001
        require_server("Redis", exc)
    return REDIS_URL


@contextmanager
def running_service(
    workdir: Path,
    backend: str = "embedded",
    *,
    workers: int = 1,
    env_overrides: dict[str, str] | None = None,
    gpus: list[str] | None = None,
) -> Iterator[Service]:
    """`ganforge up` (API + worker processes) on `backend`: `embedded` or `postgres+redis`;
    with `gpus`, one worker per list (`--gpus 0,1 --gpus 2`)."""
    port = _free_port()
    env = {
        **os.environ,
        **(env_overrides or {}),
        "GANFORGE_ARTIFACT_DIR": str(workdir / "artifacts"),
        "GANFORGE_QUEUE_PREFIX": f"test-{uuid.uuid4().hex[:8]}-",
        "GANFORGE_CACHE_DIR": os.environ.get("GANFORGE_CACHE_DIR", str(workdir / "cache")),
    }
    databases: Iterator[str] | None = None
    if backend == "embedded":
        env["GANFORGE_DATABASE_URL"] = f"sqlite:///{workdir / 'ganforge.db'}"
        env["GANFORGE_BROKER_URL"] = f"sqla+sqlite:///{workdir / 'broker.db'}"
    else:
        databases = _fresh_postgres()
        env["GANFORGE_DATABASE_URL"] = next(databases)
        env["GANFORGE_BROKER_URL"] = (env_overrides or {}).get(
            "GANFORGE_BROKER_URL"
        ) or _redis_url()
    log = workdir / "service.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "up",
                "--port",
                str(port),
                "--threads",
                "1",
                "--workers",
                str(workers),
                *(arg for devices in gpus or [] for arg in ("--gpus", devices)),
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    service = Service(f"http://127.0.0.1:{port}", env, workdir, process, log)
    try:
        _wait_healthy(service)
        yield service
    finally:
        _stop_in_background(process, databases)


# Services on their way out. A Celery worker takes several seconds to stop even when idle
# (its loop looks at the stop request every 2 s, then it winds down); the next test need not
# wait for that, since every service has its own port, database and queues. The session
# waits for all of them at its end (`stop_services`), so none outlives the tests.
_STOPPING: list[threading.Thread] = []


def _stop_in_background(process: subprocess.Popen[bytes], databases: Iterator[str] | None) -> None:
    process.terminate()

    def finish() -> None:
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if databases is not None:
            for _ in databases:  # drops the database
                pass

    thread = threading.Thread(target=finish, name=f"stop-{process.pid}")
    thread.start()
    _STOPPING.append(thread)


def stop_services() -> None:
    """Wait until every service started by running_service has stopped."""
    while _STOPPING:
        _STOPPING.pop().join()


@pytest.fixture(scope="module", params=["embedded", "postgres+redis"])
def service(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp(f"service-{request.param.replace('+', '-')}")
    with running_service(workdir, request.param) as running:
        yield running


def _wait_healthy(service: Service, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process is not None and service.process.poll() is not None:
            break
        try:
            if httpx2.get(service.url + "/api/health", timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("the service did not come up; log:\n" + service.log.read_text()[-4000:])
