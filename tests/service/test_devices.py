"""Workers that know their GPUs (issue 6), through real `ganforge up` processes.

The machine has no GPU, so the workers' device lists are simulated (GANFORGE_SIMULATE_GPUS=1):
jobs train on the CPU while allocation, CUDA_VISIBLE_DEVICES and reporting run for real. Jobs
asking for 1 and 2 GPUs go in all at once; afterwards the jobs' recorded devices and times
show that no device was held by two running jobs at once, that each job's devices came from
its own worker's list, and that 2-GPU jobs ran on the worker that has two. /api/health and
/metrics are sampled meanwhile.
"""

from __future__ import annotations

import re
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations

import pytest

from tests.service.conftest import Service, running_service, tiny_spec
from trainer.spec import TrainSpec

SIMULATE = {"GANFORGE_SIMULATE_GPUS": "1", "GANFORGE_DEVICE_WAIT_SECONDS": "1"}
ONE_GPU = tiny_spec(device="cuda")
TWO_RANKS = tiny_spec(device="cuda", distributed={"world_size": 2})  # 2 GPUs, one per rank
TWO_GPUS = tiny_spec(device="cuda", resources={"gpus": 2})  # 1 rank holding 2 GPUs
WORKER_LINE = re.compile(r"^worker (\S+): GPUs (\S+) \(simulated\); queues (\S+)$", re.M)


@dataclass
class Run:
    id: str
    gpus: int
    worker: str
    devices: list[str]
    started: datetime
    finished: datetime


@dataclass
class Observed:
    health: list[dict]  # `devices` of /api/health, sampled while the jobs ran
    metrics: list[str]  # the ganforge_device lines of /metrics, likewise


def _wait_for_devices(service: Service, host: str, total: int, timeout: float = 90) -> None:
    """Wait until the workers have registered their devices. `ganforge up` is healthy once
    its API answers; its workers start alongside and register only when Celery is ready (a
    few seconds later on a busy machine), and until then /api/health rightly lists none."""
    deadline = time.monotonic() + timeout
    with service.client() as client:
        while True:
            devices = client.get("/api/health").json()["devices"]
            if devices.get(host, {}).get("total") == total:
                return
            assert time.monotonic() < deadline, (devices, service.log.read_text()[-3000:])
            time.sleep(0.1)


def _submit_all_and_watch(service: Service, specs: list[dict]) -> tuple[list[Run], Observed]:
    _wait_for_devices(service, socket.gethostname(), 3)  # both tests' workers serve 0, 1, 2
    observed = Observed([], [])
    with service.client() as client:
        ids = []
        for spec in specs:
            made = client.post("/api/jobs", json={"spec": spec})
            assert made.status_code == 201, made.text
            ids.append(made.json()["id"])
        deadline = time.monotonic() + 240
        while True:
            health = client.get("/api/health")
            assert health.status_code == 200, health.text
            observed.health.append(health.json()["devices"])
            lines = client.get("/metrics").text.splitlines()
            observed.metrics.append("\n".join(ln for ln in lines if "ganforge_device" in ln))
            jobs = [client.get(f"/api/jobs/{job_id}").json() for job_id in ids]
            if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs):
                break
            assert time.monotonic() < deadline, [j["status"] for j in jobs]
            time.sleep(0.3)
    for job in jobs:
        assert job["status"] == "succeeded" and job["step"] == 40, (
            job,
            service.log.read_text()[-3000:],
        )
    runs = [
        Run(
            job["id"],
            TrainSpec.model_validate(spec).gpus,
            job["worker"],
            job["devices"],
            datetime.fromisoformat(job["started_at"]),
            datetime.fromisoformat(job["finished_at"]),
        )
        for spec, job in zip(specs, jobs, strict=True)
    ]
    return runs, observed


def _workers(service: Service) -> dict[str, list[str]]:
    """Each worker process's devices, as it announced them when it started."""
    found = {m[1]: m[2].split(",") for m in WORKER_LINE.finditer(service.log.read_text())}
    assert found, service.log.read_text()[-3000:]
    return found


def _assert_never_shared(runs: list[Run], host: str) -> None:
    for a, b in combinations(runs, 2):
        shared = set(a.devices) & set(b.devices)
        if shared and a.worker.split(":")[0] == b.worker.split(":")[0] == host:
            overlap = a.started < b.finished and b.started < a.finished
            assert not overlap, f"devices {shared} held by {a} and {b} at once"


def _assert_each_job_ran_on_its_workers_devices(
    service: Service, runs: list[Run], host: str
) -> dict[str, list[str]]:
    workers = _workers(service)
    log = service.log.read_text()
    for run in runs:
        assert run.worker in workers, (run, workers)
        assert run.worker.split(":")[0] == host
        assert len(run.devices) == run.gpus and set(run.devices) <= set(workers[run.worker]), run
        # The job's own process saw exactly its devices.
        visible = f"job {run.id}: CUDA_VISIBLE_DEVICES={','.join(run.devices)} (simulated"
        assert visible in log, visible
    return workers


@pytest.mark.parametrize("backend", ["embedded", "postgres+redis"])
def test_two_workers_with_disjoint_devices_never_run_two_jobs_on_one_device(tmp_path, backend):
    host = socket.gethostname()
    specs = [ONE_GPU, TWO_RANKS, ONE_GPU, TWO_GPUS, ONE_GPU, ONE_GPU]
    with running_service(tmp_path, backend, gpus=["0,1", "2"], env_overrides=SIMULATE) as service:
        runs, observed = _submit_all_and_watch(service, specs)
        workers = _assert_each_job_ran_on_its_workers_devices(service, runs, host)
        _assert_never_shared(runs, host)

        assert sorted(workers.values()) == [["0", "1"], ["2"]]
        two = next(w for w, d in workers.items() if len(d) == 2)
        assert {r.worker for r in runs if r.gpus == 2} == {two}  # only there
        # The two workers ran jobs at the same time.
        assert any(
            a.worker != b.worker and a.started < b.finished and b.started < a.finished
            for a, b in combinations(runs, 2)
        )

        # Reporting: every sample adds up, and the busy devices were seen.
        assert all(snap[host]["total"] == 3 for snap in observed.health), observed.health
        assert all(snap[host]["free"] + snap[host]["busy"] == 3 for snap in observed.health), (
            observed.health
        )
        assert max(snap[host]["busy"] for snap in observed.health) >= 2
        assert any(
            f'ganforge_device_busy{{device="2",host="{host}"}} 1.0' in text
            for text in observed.metrics
        )
        with service.client() as client:
            assert client.get("/api/health").json()["devices"] == {
                host: {"total": 3, "free": 3, "busy": 0}
            }
            text = client.get("/metrics").text
        assert f'ganforge_devices{{host="{host}",state="free"}} 3.0' in text
        assert f'ganforge_devices{{host="{host}",state="busy"}} 0.0' in text
        for device in "012":
            assert f'ganforge_device_busy{{device="{device}",host="{host}"}} 0.0' in text


def test_workers_sharing_a_device_take_turns_on_it(tmp_path):
    """Overlapping lists (0,1 and 1,2): both workers may take device 1, never at the same
    time; a 2-GPU job whose devices are partly held waits, or goes back to the queue."""
    host = socket.gethostname()
    specs = [TWO_GPUS, ONE_GPU, TWO_RANKS, ONE_GPU, TWO_GPUS, ONE_GPU]
    with running_service(
        tmp_path, "postgres+redis", gpus=["0,1", "1,2"], env_overrides=SIMULATE
    ) as service:
        runs, observed = _submit_all_and_watch(service, specs)
        workers = _assert_each_job_ran_on_its_workers_devices(service, runs, host)
        _assert_never_shared(runs, host)
        assert sorted(workers.values()) == [["0", "1"], ["1", "2"]]
        assert all(snap[host]["total"] == 3 for snap in observed.health), observed.health
