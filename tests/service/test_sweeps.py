"""Sweeps on the whole service: `ganforge up` with two real workers, whose controllers create
the trials, feed the study and finish the sweep, on SQLite + the embedded broker and on
PostgreSQL + Redis. Each trial is run exactly once, also when its worker is killed mid-trial
(it resumes from its checkpoint). Short leases, so the reconciler acts within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from sqlalchemy import create_engine, select

from app import queue, sweep_study
from app.models import FINISHED, Job
from tests.service.conftest import ROOT, Service, _wait_healthy, running_service, tiny_spec
from tests.service.test_reliability import FAST, _owner_pid


@pytest.fixture(scope="module", params=["embedded", "postgres+redis"])
def svc(request: pytest.FixtureRequest, tmp_path_factory) -> Iterator[Service]:
    workdir = tmp_path_factory.mktemp(f"sweeps-{request.param.replace('+', '-')}")
    with running_service(workdir, request.param, workers=2, env_overrides=FAST) as service:
        yield service


def _study(service: Service, sweep: dict[str, Any]) -> optuna.Study:
    url = service.env["GANFORGE_DATABASE_URL"]
    name = f"ganforge-sweep-{sweep['id']}"
    return optuna.load_study(study_name=name, storage=sweep_study.storage(url))


def _wait_ended(service: Service, sweep_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with service.client() as client:
        while True:
            sweep: dict[str, Any] = client.get(f"/api/sweeps/{sweep_id}").json()
            if sweep["status"] != "running":
                return sweep
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"sweep still running: {sweep}\n" + service.log.read_text()[-3000:]
                )
            time.sleep(0.2)


def _once_each(service: Service, sweep: dict[str, Any], attempts: dict[int, int]) -> None:
    """Every trial succeeded at its last step, with the attempts given (1: run once), its
    metrics stored once per step, and the study tells the same story as the jobs."""
    with service.client() as client:
        for trial in sweep["trials"]:
            job = client.get(f"/api/jobs/{trial['job_id']}").json()
            assert job["status"] == "succeeded" and job["step"] == job["steps"], job
            assert job["attempt"] == attempts.get(trial["number"], 1), job
            series = client.get(
                f"/api/jobs/{job['id']}/metrics", params={"names": "loss/d", "max_points": 10**5}
            ).json()["series"]["loss/d"]
            assert series["step"] == list(range(5, job["steps"] + 1, 5))
    study = _study(service, sweep)
    assert [t.number for t in study.trials] == [t["number"] for t in sweep["trials"]]
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert [t.value for t in study.trials] == [t["value"] for t in sweep["trials"]]


def test_a_grid_sweep_through_the_cli_runs_each_trial_once_and_finds_the_best(svc, tmp_path):
    body = {
        "name": "order x accumulation",
        "base": tiny_spec(
            steps=60, every={"metrics": 5, "samples": 0, "checkpoint": 20, "eval": 20}
        ),
        "space": {
            "schedule.order": {"values": ["d_first", "g_first"]},
            "accumulation.steps": {"values": [1, 2]},
        },
        "method": "grid",
        "objective": {"metric": "eval/hq", "mode": "max"},
        "budget": {"trials": 4, "concurrent": 2},
        "seed": 0,
    }
    path: Path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(body))
    watched = subprocess.run(
        [sys.executable, "-m", "app.cli", "sweep", str(path), "--watch", "--server", svc.url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert watched.returncode == 0, watched.stdout + watched.stderr + svc.log.read_text()[-3000:]
    sweep_id = watched.stdout.split()[1]
    assert f"sweep {sweep_id} finished: 4/4 trials (4 succeeded)" in watched.stdout
    with svc.client() as client:
        sweep = client.get(f"/api/sweeps/{sweep_id}").json()
    assert sweep["status"] == "finished" and sweep["counts"] == {"succeeded": 4}
    assert len({tuple(sorted(t["params"].items())) for t in sweep["trials"]}) == 4
    _once_each(svc, sweep, {})
    best = max(sweep["trials"], key=lambda t: t["value"])
    assert sweep["best"] == {
        "job_id": best["job_id"],
        "value": best["value"],
        "params": best["params"],
    }
    assert f"best: #{best['number']}" in watched.stdout


def test_a_worker_killed_mid_trial_leaves_the_trial_resumed_and_run_once(svc):
    spec = tiny_spec(steps=800, every={"metrics": 5, "samples": 0, "checkpoint": 100, "eval": 400})
    body = {
        "base": spec,
        "space": {"optim.g.lr": {"values": [0.004]}},
        "method": "grid",
        "objective": {"metric": "eval/hq"},
        "budget": {"trials": 1, "concurrent": 1},
    }
    with svc.client() as client:
        made = client.post("/api/sweeps", json=body)
        assert made.status_code == 201, made.text
        sweep_id = made.json()["id"]
        deadline = time.monotonic() + 60
        while True:
            trials = client.get(f"/api/sweeps/{sweep_id}").json()["trials"]
            if trials and trials[0]["step"] >= 250:
                break
            assert time.monotonic() < deadline, "the trial did not get going"
            time.sleep(0.05)
    os.kill(_owner_pid(svc, trials[0]["job_id"]), signal.SIGKILL)
    sweep = _wait_ended(svc, sweep_id)
    assert sweep["status"] == "finished" and len(sweep["trials"]) == 1, sweep
    _once_each(svc, sweep, {0: 2})  # its second attempt resumed it; no second trial


def test_a_tpe_sweep_with_the_median_pruner_prunes_the_leaking_schedule(svc):
    """TPE over D's isolation in the essay's order (G first, zero_grad after), objective the
    leak audit of D (min): `freeze` leaks exactly 0, `none` about 1 at every metrics step, so
    once a `freeze` trial completed the median pruner (one startup trial) stops every `none`
    trial at its first reports; it ends `pruned` with a checkpoint, the study agrees.
    Seed 2 makes TPE's (random, startup) proposals freeze, none, freeze, none. The trials
    are long enough (1500 steps, several seconds) that controller passes (every second) see
    a `none` trial running even on a loaded machine: one that ended first would rightly
    finish unpruned (it was seen 1 run in 10 with 600 steps under load)."""
    spec = tiny_spec(
        steps=1500,
        every={"metrics": 5, "samples": 0, "checkpoint": 300, "eval": 0},
        schedule={"order": "g_first", "zero_grad": "after"},
    )
    body = {
        "base": spec,
        "space": {"schedule.isolation": {"values": ["freeze", "none"]}},
        "method": "tpe",
        "objective": {"metric": "audit/leak_d", "mode": "min"},
        "budget": {"trials": 4, "concurrent": 1},
        "pruner": {"kind": "median", "startup_trials": 1},
        "seed": 2,
    }
    with svc.client() as client:
        made = client.post("/api/sweeps", json=body)
        assert made.status_code == 201, made.text
        sweep = _wait_ended(svc, made.json()["id"], timeout=150)
        assert sweep["status"] == "finished", sweep
        trials = sorted(sweep["trials"], key=lambda t: t["number"])
        isolation = [t["params"]["schedule.isolation"] for t in trials]
        assert isolation[0] == "freeze", isolation  # the seed's first proposal
        pruned = [t for t in trials if t["status"] == "pruned"]
        assert pruned and all(t["params"]["schedule.isolation"] == "none" for t in pruned)
        for t in trials:
            if t["params"]["schedule.isolation"] == "freeze":
                assert t["status"] == "succeeded" and t["value"] == 0.0, t
            else:
                assert t["status"] == "pruned", t  # a freeze trial completed before it
        for t in pruned:
            job = client.get(f"/api/jobs/{t['job_id']}").json()
            assert job["status"] == "pruned" and job["attempt"] == 1, job
            assert 0 < job["pruned_at"] < job["steps"] and "median" in job["prune_rule"], job
            assert job["step"] < job["steps"], job  # stopped at once, not run to the end
            steps = [
                c["step"] for c in client.get(f"/api/jobs/{job['id']}/checkpoints").json()["items"]
            ]
            assert steps and steps[-1] == job["step"], steps  # the checkpoint of its stop
    states = {t.number: t.state for t in _study(svc, sweep).trials}
    assert states == {
        t["number"]: TrialState.PRUNED if t["status"] == "pruned" else TrialState.COMPLETE
        for t in trials
    }


def _api_pid(service: Service) -> int:
    """The API child of the service's `ganforge up` (its supervisor restarts it)."""
    port = service.url.rsplit(":", 1)[1]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"api" in argv and port.encode() in argv and b"app.cli" in argv:
            return int(entry.name)
    raise AssertionError(f"no API process on port {port}")


def test_duplicate_messages_and_an_api_killed_mid_sweep_run_each_trial_once(svc):
    """Every trial's message sent twice more (a redelivery), and the API killed with -9 and
    restarted by its supervisor while the sweep runs: each trial still runs exactly once
    (attempt 1, every metric step once) and the study agrees with the jobs."""
    from app.settings import Settings

    settings = Settings(
        database_url=svc.env["GANFORGE_DATABASE_URL"],
        broker_url=svc.env["GANFORGE_BROKER_URL"],
        queue_prefix=svc.env["GANFORGE_QUEUE_PREFIX"],
    )
    spec = tiny_spec(steps=300, every={"metrics": 5, "samples": 0, "checkpoint": 100, "eval": 100})
    body = {
        "base": spec,
        "space": {"optim.g.lr": {"values": [0.001, 0.002, 0.004, 0.008]}},
        "method": "grid",
        "objective": {"metric": "eval/hq", "mode": "max"},
        "budget": {"trials": 4, "concurrent": 2},
        "seed": 0,
    }
    with svc.client() as client:
        made = client.post("/api/sweeps", json=body)
        assert made.status_code == 201, made.text
    sweep_id = made.json()["id"]
    engine = create_engine(settings.database_url)
    sent: set[str] = set()
    killed = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                rows = conn.execute(
                    select(Job.id, Job.gpus, Job.status).where(Job.sweep_id == sweep_id)
                ).all()
            for job_id, gpus, _status in rows:
                if job_id not in sent:
                    for _ in range(2):
                        queue.send(settings, job_id, queue.queue_name(settings, gpus))
                    sent.add(job_id)
            if not killed and any(status == "running" for *_, status in rows):
                os.kill(_api_pid(svc), signal.SIGKILL)
                killed = True
            if len(rows) == 4 and all(status in FINISHED for *_, status in rows):
                break
            time.sleep(0.1)
    finally:
        engine.dispose()
    assert killed and len(sent) == 4
    _wait_healthy(svc)  # the supervisor restarted the API
    sweep = _wait_ended(svc, sweep_id)
    assert sweep["status"] == "finished" and sweep["counts"] == {"succeeded": 4}, sweep
    _once_each(svc, sweep, {})
