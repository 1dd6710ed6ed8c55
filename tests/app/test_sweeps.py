"""Sweeps on a real database (SQLite and PostgreSQL) with the real Optuna study in it: the API
checks a space at submission, the controller (app.sweep_controller, called here as each
worker calls it) creates the trial jobs `concurrent` at a time, feeds the study and prunes.
No worker runs: trials are driven through app.jobs (claim, finish) and metric points, as a
worker records them."""

from __future__ import annotations

import logging
import threading
from typing import Any

import optuna
import pytest
from fastapi.testclient import TestClient
from optuna.trial import TrialState
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app import jobs, metricstore, sweep_space, sweep_study
from app.models import Job, Sweep
from app.settings import Settings
from app.store import FileStore
from app.sweep_controller import run_controller_pass

RING = {"steps": 60, "batch_size": 64, "every": {"eval": 20}}


@pytest.fixture(autouse=True)
def _controller_never_fails(caplog: pytest.LogCaptureFixture):
    """The controller logs (and survives) trouble with a sweep; in these tests there is none."""
    yield
    failures = [r for r in caplog.records if r.name.startswith("ganforge.sweeps")]
    assert not [r.getMessage() for r in failures if r.levelno >= logging.WARNING]


def _sweep(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "order study",
        "base": RING,
        "space": {
            "schedule.order": {"values": ["d_first", "g_first", "simultaneous"]},
            "accumulation.steps": {"values": [1, 4]},
        },
        "method": "grid",
        "objective": {"metric": "eval/hq", "mode": "max"},
        "budget": {"trials": 4, "concurrent": 2},
        "priority": 7,
        "seed": 3,
    }
    body.update(overrides)
    return body


def _parts(client: TestClient) -> tuple[Engine, Settings]:
    engine: Engine = client.app.state.sessions.kw["bind"]  # type: ignore[attr-defined]
    return engine, client.app.state.settings  # type: ignore[attr-defined]


def _pass(client: TestClient, owner: str = "test") -> Any:
    engine, settings = _parts(client)
    return run_controller_pass(engine, settings, owner)


def _trial_jobs(client: TestClient, sweep_id: str) -> list[Job]:
    engine, _ = _parts(client)
    with Session(engine) as session:
        return list(
            session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.trial_number))
        )


def _jobs(client: TestClient, sweep_id: str) -> list[dict[str, Any]]:
    trials = client.get(f"/api/sweeps/{sweep_id}").json()["trials"]
    return [client.get(f"/api/jobs/{t['job_id']}").json() for t in trials]


def _run(
    client: TestClient,
    job_id: str,
    values: list[float],
    *,
    outcome: str = "succeeded",
    every: int = 20,
) -> None:
    """What a worker records: claim, the objective at each evaluation, the outcome."""
    engine, _ = _parts(client)
    with engine.begin() as conn:
        assert jobs.claim(conn, job_id, "worker-1")
        points = [("eval/hq", every * (i + 1), v) for i, v in enumerate(values)]
        points += [("perf/steps_per_s", every * (i + 1), 100.0) for i in range(len(values))]
        points += [("audit/leak_d", every, 0.0), ("audit/leak_g", every, 0.5)]
        metricstore.insert_points(conn, job_id, points)
    if outcome:
        with engine.begin() as conn:
            assert jobs.finish(conn, job_id, "worker-1", outcome, every * len(values))


def _study(client: TestClient, sweep_id: str) -> optuna.Study:
    engine, settings = _parts(client)
    with engine.connect() as conn:
        name = conn.scalar(select(Sweep.study_name).where(Sweep.id == sweep_id))
    return optuna.load_study(study_name=name, storage=sweep_study.storage(settings.database_url))


def _refused(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    answer = client.post("/api/sweeps", json=body)
    assert answer.status_code == 422, answer.text
    detail: dict[str, Any] = answer.json()["detail"][0]
    assert detail["message"].startswith(f"{detail['field']}: "), detail
    return detail


def test_a_space_that_can_make_an_invalid_spec_is_a_422_naming_the_field_and_value(client):
    cases = [
        ({"optim.g.lrr": {"values": [1e-3]}}, "grid", "space.optim.g.lrr", "unknown field"),
        ({"optim.g": {"values": [1]}}, "grid", "space.optim.g", "section"),
        ({"optim.g.lr": {"low": 1e-4, "high": 1e-2}}, "grid", "space.optim.g.lr", "grid needs"),
        ({"optim.g.lr": {"low": 1e-2, "high": 1e-4}}, "tpe", "space.optim.g.lr", "below high"),
        ({"optim.g.lr": {"low": 0, "high": 1, "log": True}}, "tpe", "space.optim.g.lr", "> 0"),
        ({"accumulation.steps": {"values": [1, 3]}}, "tpe", "space.accumulation.steps", "3 "),
        ({"accumulation.steps": {"low": 1, "high": 4}}, "tpe", "space.accumulation.steps", "int"),
        ({"optim.g.lr": {"low": 1e-3, "high": 20}}, "random", "space.optim.g.lr", "20"),
        ({"schedule.order": {"values": ["sideways"]}}, "grid", "space.schedule.order", "d_first"),
        ({"steps": {"values": [10**7 + 1]}}, "grid", "space.steps", "10000000"),
    ]
    for space, method, field, words in cases:
        detail = _refused(client, _sweep(space=space, method=method))
        assert detail["field"] == field and words in detail["message"], (space, detail)
    # Only invalid together: under grid every combination is checked.
    both = {"batch_size": {"values": [64, 6]}, "accumulation.steps": {"values": [1, 4]}}
    detail = _refused(client, _sweep(space=both))
    assert detail["field"] == "space.accumulation.steps", detail
    assert "batch_size=6" in detail["message"] and "must divide" in detail["message"]
    array = {"data": {"kind": "array", "dataset_id": "x"}}
    detail = _refused(client, _sweep(base=array, space={"data.dataset_id": {"values": ["nope"]}}))
    assert detail["field"] == "space.data.dataset_id" and "no dataset nope" in detail["message"]
    big = {f"optim.{n}.lr": {"values": [0.001 * i for i in range(1, 23)]} for n in "gd"}
    big["ema"] = {"values": [0.1 * i for i in range(1, 10)]}
    big["seed"] = {"values": list(range(30))}
    assert "at most 10000" in _refused(client, _sweep(space=big))["message"]
    detail = _refused(client, _sweep(pruner={"kind": "median", "reduction_factor": 3}))
    assert detail["field"] == "pruner" and "median pruner takes" in detail["message"], detail
    assert _refused(client, _sweep(base={"accumulation": {"steps": 3}}))["field"] == "base"
    assert client.get("/api/sweeps").json()["items"] == []
    assert client.get("/api/jobs").json()["items"] == []


def test_a_grid_sweep_runs_concurrent_trials_at_a_time_and_the_study_matches_the_jobs(client):
    made = client.post("/api/sweeps", json=_sweep())
    assert made.status_code == 201, made.text
    sweep = made.json()
    assert sweep["status"] == "running" and sweep["pruner"] == {"kind": "none"}
    # The API's own first pass created `concurrent` trials; more passes add none.
    for _ in range(3):
        _pass(client)
    first = _jobs(client, sweep["id"])
    assert [j["trial_number"] for j in first] == [0, 1]
    for job in first:
        assert job["status"] == "queued" and job["sweep_id"] == sweep["id"]
        assert job["priority"] == 7 and job["tags"] == [f"sweep:{sweep['id']}"]
        params = job["trial_params"]
        assert job["spec"]["schedule"]["order"] == params["schedule.order"]
        assert job["spec"]["accumulation"]["steps"] == params["accumulation.steps"]
        assert job["spec"]["steps"] == 60 and job["spec"]["batch_size"] == 64
    values = {0: [0.2, 0.5, 0.6], 1: [0.1, 0.3, 0.9], 2: [0.2, 0.2, 0.2], 3: [0.3, 0.4, 0.7]}
    done: set[int] = set()
    while len(done) < 4:
        view = client.get(f"/api/sweeps/{sweep['id']}").json()
        queued = [t for t in view["trials"] if t["status"] == "queued"]
        assert 1 <= len(queued) <= 2 and len(view["trials"]) <= 4
        _run(client, queued[0]["job_id"], values[queued[0]["number"]])
        done.add(queued[0]["number"])
        _pass(client)
    view = client.get(f"/api/sweeps/{sweep['id']}").json()
    assert view["status"] == "finished" and view["finished_at"] is not None
    assert view["counts"] == {"succeeded": 4} and len(view["trials"]) == 4
    combos = {tuple(sorted(t["params"].items())) for t in view["trials"]}
    assert len(combos) == 4  # each grid point once
    assert [t["value"] for t in view["trials"]] == [values[n][-1] for n in range(4)]
    assert view["best"]["job_id"] == view["trials"][1]["job_id"] and view["best"]["value"] == 0.9
    trial = view["trials"][0]
    assert trial["steps_per_second"] == 100.0 and trial["audit_leak"] == 0.25
    study = _study(client, sweep["id"])
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert [t.value for t in study.trials] == [t["value"] for t in view["trials"]]
    assert [t.params for t in study.trials] == [t["params"] for t in view["trials"]]
    assert study.best_trial.number == 1
    assert _pass(client).created == []  # finished: nothing more


def test_tpe_with_the_median_pruner_prunes_a_bad_trial(client):
    body = _sweep(
        space={"optim.g.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
        method="tpe",
        budget={"trials": 3, "concurrent": 1},
        pruner={"kind": "median", "startup_trials": 1},
    )
    sweep = client.post("/api/sweeps", json=body).json()
    assert sweep["pruner"] == {"kind": "median", "startup_trials": 1}
    good = sweep["trials"] or client.get(f"/api/sweeps/{sweep['id']}").json()["trials"]
    assert len(good) == 1 and 1e-4 <= good[0]["params"]["optim.g.lr"] <= 1e-2
    _run(client, good[0]["job_id"], [0.8, 0.9, 0.95])
    _pass(client)
    bad = client.get(f"/api/sweeps/{sweep['id']}").json()["trials"][1]
    _run(client, bad["job_id"], [0.1], outcome="")  # still running, far below the median
    report = _pass(client)
    assert report.pruned == [bad["job_id"]]
    job = client.get(f"/api/jobs/{bad['job_id']}").json()
    assert job["status"] == "cancelling" and job["pruned_at"] == 20
    assert job["prune_rule"] == "median pruner at step 20"
    engine, _ = _parts(client)
    with engine.begin() as conn:  # its worker stops with a checkpoint, as for a cancel
        assert jobs.finish(conn, bad["job_id"], "worker-1", "cancelled", 20)
    _pass(client)
    view = client.get(f"/api/sweeps/{sweep['id']}").json()
    pruned = view["trials"][1]
    assert pruned["status"] == "pruned" and pruned["pruned_at"] == 20
    assert pruned["prune_rule"] == "median pruner at step 20" and pruned["value"] == 0.1
    assert view["counts"] == {"succeeded": 1, "pruned": 1, "queued": 1}
    states = [t.state for t in _study(client, sweep["id"]).trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]
    assert view["best"]["job_id"] == good[0]["job_id"]


def test_duplicate_and_concurrent_controllers_create_each_trial_once(client):
    body = _sweep(
        space={"optim.g.lr": {"low": 1e-4, "high": 1e-2}, "ema": {"values": [0.9, 0.99]}},
        method="random",
        budget={"trials": 6, "concurrent": 3},
    )
    sweep = client.post("/api/sweeps", json=body).json()
    for owner in ("a", "b", "a", "c"):
        _pass(client, owner)
    first = _trial_jobs(client, sweep["id"])
    assert [j.trial_number for j in first] == [0, 1, 2]
    for job in first:
        _run(client, job.id, [0.5])
    engine, settings = _parts(client)
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def controller(owner: str) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                run_controller_pass(engine, settings, owner)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=controller, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    made = _trial_jobs(client, sweep["id"])
    assert [j.trial_number for j in made] == [0, 1, 2, 3, 4, 5]
    study = _study(client, sweep["id"])
    assert len(study.trials) == 6  # no trial asked without its job
    assert [t.params for t in study.trials] == [j.trial_params for j in made]
    assert len({j.trial_params["optim.g.lr"] for j in made}) == 6  # a new proposal each


def test_a_controller_stopped_between_ask_and_insert_is_repaired_by_the_next_pass(client):
    sweep = client.post("/api/sweeps", json=_sweep(budget={"trials": 4, "concurrent": 3})).json()
    engine, settings = _parts(client)
    with Session(engine) as session:
        row = session.get_one(Sweep, sweep["id"])
    assert len(_trial_jobs(client, sweep["id"])) == 3
    # A controller asked the study for trial 3 and stopped before inserting its job; another
    # asked for trial 4 and stopped before even choosing its parameters.
    study = sweep_study.load(settings.database_url, row)
    asked = study.ask(sweep_space.distributions(sweep_study.space_of(row)))
    study.ask()
    _pass(client)
    made = _trial_jobs(client, sweep["id"])
    assert [j.trial_number for j in made] == [0, 1, 2, 3, 4]
    assert made[3].trial_params == asked.params
    assert set(made[4].trial_params) == {"schedule.order", "accumulation.steps"}
    points = {tuple(sorted(j.trial_params.items())) for j in made}
    assert len(points) == 5  # grid points stay distinct
    _pass(client)
    assert len(_trial_jobs(client, sweep["id"])) == 5
    assert len(_study(client, sweep["id"]).trials) == 5


def test_combinations_only_invalid_together_are_skipped_and_reported(client):
    both = {"batch_size": {"values": [64, 6]}, "accumulation.steps": {"values": [1, 4]}}
    body = _sweep(space=both, method="random", seed=1, budget={"trials": 8, "concurrent": 8})
    sweep = client.post("/api/sweeps", json=body).json()
    view = client.get(f"/api/sweeps/{sweep['id']}").json()
    assert view["skipped"], view
    for skipped in view["skipped"]:
        assert skipped["params"] == {"batch_size": 6, "accumulation.steps": 4}
        assert "accumulation.steps: must divide batch_size=6" in skipped["error"]
    assert len(view["trials"]) == 8
    for trial in view["trials"]:
        assert trial["params"] != {"batch_size": 6, "accumulation.steps": 4}
    states = {t.number: t.state for t in _study(client, sweep["id"]).trials}
    assert all(states[s["number"]] == TrialState.FAIL for s in view["skipped"])
    assert sorted(t["number"] for t in view["trials"]) == sorted(
        n for n, state in states.items() if state == TrialState.RUNNING
    )


def test_cancel_stops_the_trials_and_delete_removes_jobs_artifacts_and_study(client, tmp_path):
    sweep = client.post("/api/sweeps", json=_sweep()).json()
    trials = client.get(f"/api/sweeps/{sweep['id']}").json()["trials"]
    name = _study(client, sweep["id"]).study_name
    _run(client, trials[0]["job_id"], [0.4], outcome="")  # running
    store = FileStore(client.app.state.settings.artifact_dir)  # type: ignore[attr-defined]
    store.write(f"{store.job_dir(trials[0]['job_id'])}/samples/step_000020.png", b"png")
    cancelled = client.post(f"/api/sweeps/{sweep['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    statuses = [t["status"] for t in cancelled.json()["trials"]]
    assert statuses == ["cancelling", "cancelled"]
    assert client.post(f"/api/sweeps/{sweep['id']}/cancel").status_code == 200  # again: fine
    assert client.delete(f"/api/sweeps/{sweep['id']}").status_code == 409  # one is stopping
    assert _pass(client).created == []
    engine, settings = _parts(client)
    with engine.begin() as conn:
        assert jobs.finish(conn, trials[0]["job_id"], "worker-1", "cancelled", 20)
    _pass(client)
    view = client.get(f"/api/sweeps/{sweep['id']}").json()
    assert view["status"] == "cancelled" and view["finished_at"] is not None
    assert view["counts"] == {"cancelled": 2}
    assert [t.state for t in _study(client, sweep["id"]).trials] == [TrialState.FAIL] * 2
    assert client.delete(f"/api/sweeps/{sweep['id']}").status_code == 204
    assert client.get(f"/api/sweeps/{sweep['id']}").status_code == 404
    for trial in trials:
        assert client.get(f"/api/jobs/{trial['job_id']}").status_code == 404
    assert not store.path(store.job_dir(trials[0]["job_id"])).exists()
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Job)) == 0
    with pytest.raises(KeyError):
        optuna.load_study(study_name=name, storage=sweep_study.storage(settings.database_url))


def test_a_running_sweep_is_not_deleted_and_unknown_sweeps_are_404(client):
    sweep = client.post("/api/sweeps", json=_sweep()).json()
    answer = client.delete(f"/api/sweeps/{sweep['id']}")
    assert answer.status_code == 409 and "cancel it first" in answer.json()["detail"]
    assert client.get("/api/sweeps/nope").status_code == 404
    assert client.post("/api/sweeps/nope/cancel").status_code == 404
    assert client.delete("/api/sweeps/nope").status_code == 404
    listed = client.get("/api/sweeps").json()["items"]
    assert [s["id"] for s in listed] == [sweep["id"]] and len(listed[0]["trials"]) == 2
