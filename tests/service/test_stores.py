"""The whole service on each artifact store (issue 13): `ganforge up` with
GANFORGE_ARTIFACT_URL=s3://... (a real S3-API server: moto's standalone server) or db (on
SQLite and on PostgreSQL), then what a user does: train, download samples, the zip and
checkpoints, generate, upload a dataset and train on it, delete the job. And two worker
"hosts" (separate working directories, no shared artifact folder) on db and on s3: a job
resumes on the other one after its first worker is killed, and the API serves its files.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select

from app.models import Job
from app.settings import Settings
from app.stores import make_store
from tests.app.conftest import _fresh_postgres
from tests.s3server import S3Server, s3_env
from tests.service.conftest import (
    ROOT,
    Service,
    _free_port,
    _redis_url,
    _wait_healthy,
    running_service,
    tiny_spec,
)

STORES = ["s3+embedded", "db+embedded", "db+postgres+redis"]


def _store_env(kind: str, request: pytest.FixtureRequest) -> dict[str, str]:
    if kind == "db":
        return {"GANFORGE_ARTIFACT_URL": "db"}
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    return {"GANFORGE_ARTIFACT_URL": f"s3://{bucket}/ganforge", **s3_env(server)}


@pytest.fixture(scope="module", params=STORES)
def store_service(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Service]:
    kind, backend = request.param.split("+", 1)
    workdir = tmp_path_factory.mktemp(f"store-{request.param.replace('+', '-')}")
    env = {**_store_env(kind, request), "GANFORGE_DELETE_GRACE_SECONDS": "0"}
    with running_service(workdir, backend, env_overrides=env) as service:
        yield service


def _store_of(service: Service):  # type: ignore[no-untyped-def]
    env = service.env
    settings = Settings(
        database_url=env["GANFORGE_DATABASE_URL"],
        artifact_url=env["GANFORGE_ARTIFACT_URL"],
        s3_endpoint_url=env.get("GANFORGE_S3_ENDPOINT_URL"),
        cache_dir=service.workdir / "test-cache",
    )
    return make_store(settings)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_train_download_generate_upload_and_delete_on_the_store(store_service: Service) -> None:
    service = store_service
    store = _store_of(service)
    with service.client() as client:
        job_id = client.post("/api/jobs", json={"spec": tiny_spec()}).json()["id"]
        job = service.wait_for(job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded", job
        # Nothing went to the local artifact folder: the files are in the store.
        assert not (service.workdir / "artifacts" / "jobs").exists()
        assert [p for p, _ in store.list(f"jobs/{job_id}/checkpoints")] == [
            f"jobs/{job_id}/checkpoints/step_0000{s}.{ext}"
            for s in (20, 40)
            for ext in ("json", "safetensors")
        ]
        samples = client.get(f"/api/jobs/{job_id}/samples").json()["items"]
        assert [s["step"] for s in samples] == [20, 40]
        png = client.get(samples[0]["url"])
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert png.headers["content-length"] == str(len(png.content))
        archive = zipfile.ZipFile(io.BytesIO(client.get(f"/api/jobs/{job_id}/samples.zip").content))
        assert archive.namelist() == ["step_000020.png", "step_000040.png"]
        assert archive.read("step_000020.png") == png.content
        checkpoint = client.get(f"/api/jobs/{job_id}/checkpoints").json()["items"][-1]
        tensors = client.get(checkpoint["url"])
        assert tensors.status_code == 200
        assert hashlib.sha256(tensors.content).hexdigest() == checkpoint["sha256"]
        assert tensors.headers["x-checkpoint-sha256"] == checkpoint["sha256"]
        sidecar = client.get(checkpoint["url"], params={"part": "sidecar"}).json()
        assert sidecar["step"] == 40 and sidecar["sha256"] == checkpoint["sha256"]
        generated = client.post(f"/api/jobs/{job_id}/generate", json={"n": 8, "format": "npy"})
        assert generated.status_code == 200, generated.text
        assert np.load(io.BytesIO(generated.content)).shape == (8, 2)
        _train_on_an_upload(service, client)
        assert client.delete(f"/api/jobs/{job_id}").status_code == 204
        assert list(store.list(f"jobs/{job_id}")) == []
    store.close()


def _train_on_an_upload(service: Service, client) -> None:  # type: ignore[no-untyped-def]
    points = np.random.default_rng(0).normal(size=(256, 2)).astype(np.float32)
    upload = client.post("/api/datasets", files={"file": ("points.npy", _npy(points))})
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    assert not (service.workdir / "artifacts" / "datasets").exists()
    spec = tiny_spec(data={"kind": "array", "dataset_id": dataset_id})
    job_id = client.post("/api/jobs", json={"spec": spec}).json()["id"]
    job = service.wait_for(job_id, ("succeeded", "failed"))
    assert job["status"] == "succeeded", job
    preview = client.get(f"/api/datasets/{dataset_id}/preview.png")
    assert preview.status_code == 200 and preview.content.startswith(b"\x89PNG")
    store = _store_of(service)
    assert store.exists(f"datasets/{dataset_id}.npy")
    assert client.delete(f"/api/datasets/{dataset_id}").status_code == 204
    assert not store.exists(f"datasets/{dataset_id}.npy")
    store.close()


def test_retention_and_manual_deletes_empty_the_store(store_service: Service) -> None:
    """keep_last 1 on a job of 4 checkpoints: the worker deletes the older three from the store
    (the grace period is 0 here), the pinned one stays; a DELETE removes a file too."""
    service = store_service
    store = _store_of(service)
    spec = tiny_spec(steps=80, every={"metrics": 5, "samples": 0, "checkpoint": 20, "eval": 0})
    with service.client() as client:
        job_id = client.post(
            "/api/jobs", json={"spec": {**spec, "retention": {"keep_last": 1}}}
        ).json()["id"]
        job = service.wait_for(job_id, ("succeeded", "failed"))
        assert job["status"] == "succeeded", job
        items = client.get(f"/api/jobs/{job_id}/checkpoints").json()["items"]
        assert [c["step"] for c in items] == [80]
        folder = f"jobs/{job_id}/checkpoints"
        assert [p for p, _ in store.list(folder)] == [
            f"{folder}/step_000080.json",
            f"{folder}/step_000080.safetensors",
        ]
        assert job["artifact_bytes"] == sum(size for _, size in store.list(f"jobs/{job_id}"))
        other = client.post("/api/jobs", json={"spec": spec}).json()["id"]
        assert service.wait_for(other, ("succeeded", "failed"))["status"] == "succeeded"
        assert client.post(f"/api/jobs/{other}/checkpoints/20/pin").status_code == 200
        assert client.delete(f"/api/jobs/{other}/checkpoints/40").status_code == 204
        assert client.delete(f"/api/jobs/{other}/checkpoints/20").status_code == 409  # pinned
        plan = client.get(f"/api/jobs/{other}/retention").json()
        assert [c["step"] for c in plan["items"]] == [20, 60, 80]
        assert not store.exists(f"jobs/{other}/checkpoints/step_000040.safetensors")
        assert store.exists(f"jobs/{other}/checkpoints/step_000020.safetensors")
    store.close()


# ---- two worker hosts ------------------------------------------------------------------------

HOST_RUN = tiny_spec(steps=1200, every={"metrics": 5, "samples": 0, "checkpoint": 100, "eval": 0})
FAST = {
    "GANFORGE_LEASE_SECONDS": "4",
    "GANFORGE_RESEND_AFTER_SECONDS": "2",
    "GANFORGE_RECONCILE_EVERY_SECONDS": "1",
}


@contextmanager
def _process(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[int]:
    cwd.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", *args],
            cwd=cwd,
            env={**env, "PYTHONPATH": str(ROOT)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _host_env(base: dict[str, str], folder: Path) -> dict[str, str]:
    """What one machine has of its own: a working directory, a local artifact folder (never
    used: the store is remote) and a cache."""
    return {
        **base,
        "GANFORGE_ARTIFACT_DIR": str(folder / "artifacts"),
        "GANFORGE_CACHE_DIR": str(folder / "cache"),
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["db", "s3"])
def test_a_job_resumes_on_another_worker_host_with_no_shared_folder(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    databases = _fresh_postgres()
    database_url = next(databases)
    base = {
        **os.environ,
        **FAST,
        **_store_env(kind, request),
        "GANFORGE_DATABASE_URL": database_url,
        "GANFORGE_BROKER_URL": _redis_url(),
        "GANFORGE_QUEUE_PREFIX": f"hosts-{tmp_path.name[-8:]}-",
    }
    api = tmp_path / "api-host"
    subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "upgrade"],
        cwd=ROOT,
        env=_host_env(base, api),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    with ExitStack() as stack:
        stack.callback(lambda: list(databases))
        stack.enter_context(
            _process(["api", "--port", str(port)], api, _host_env(base, api), tmp_path / "api.log")
        )
        workers = {}
        for name in ("host-a", "host-b"):
            env = {**_host_env(base, tmp_path / name), "GANFORGE_HOST_NAME": name}
            pid = stack.enter_context(
                _process(
                    ["worker", "--threads", "1"], tmp_path / name, env, tmp_path / f"{name}.log"
                )
            )
            workers[pid] = name
        service = Service(f"http://127.0.0.1:{port}", base, tmp_path, None, tmp_path / "api.log")
        _wait_healthy(service)
        _kill_the_first_host_and_resume(service, database_url, workers, tmp_path)
    for name in ("api-host", "host-a", "host-b"):
        assert not (tmp_path / name / "artifacts" / "jobs").exists(), name


def _kill_the_first_host_and_resume(
    service: Service, database_url: str, workers: dict[int, str], tmp_path: Path
) -> None:
    engine = create_engine(database_url)
    with service.client() as client:
        job_id = client.post("/api/jobs", json={"spec": HOST_RUN}).json()["id"]
        deadline = time.monotonic() + 90
        while client.get(f"/api/jobs/{job_id}").json()["step"] < 250:
            assert time.monotonic() < deadline, "the job did not get going"
            time.sleep(0.05)
        with engine.connect() as conn:
            owner = conn.scalar(select(Job.lease_owner).where(Job.id == job_id))
        first = int(owner.split(":")[1])
        os.kill(first, signal.SIGKILL)
        job = service.wait_for(job_id, ("succeeded", "failed", "cancelled"), timeout=180)
        assert job["status"] == "succeeded" and job["attempt"] == 2, job
        with engine.connect() as conn:
            worker = conn.scalar(select(Job.worker).where(Job.id == job_id))
        series = client.get(
            f"/api/jobs/{job_id}/metrics", params={"names": "loss/d", "max_points": 100000}
        ).json()["series"]["loss/d"]
        assert series["step"] == list(range(5, 1201, 5))  # none missing, none twice
        checkpoints = client.get(f"/api/jobs/{job_id}/checkpoints").json()["items"]
        assert [c["step"] for c in checkpoints] == list(range(100, 1201, 100))
        for item in checkpoints[::5]:
            body = client.get(item["url"]).content
            assert hashlib.sha256(body).hexdigest() == item["sha256"]
    engine.dispose()
    # It finished on the other host: another process, which read the checkpoint from the store.
    assert worker is not None and f":{first}:" not in worker, (worker, first)
    survivor = next(name for pid, name in workers.items() if pid != first)
    assert job_id in (tmp_path / f"{survivor}.log").read_text()
