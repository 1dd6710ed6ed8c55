"""API tokens, on SQLite and PostgreSQL.

The protected routes are not listed here: they are read from the app's own OpenAPI schema,
so a route added later is covered without touching this file. The rule the app must keep:
once a token exists, every write (anything but GET/HEAD, except the few writes that change
nothing, named in OPEN_WRITES) and every download (a GET whose 200 is not JSON or an event
stream) answers 401 without a token, with a wrong one and with a revoked one; everything
else stays open. Each operation is then actually called, to see that the app does just that.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.auth import COOKIE
from app.hostguard import is_loopback
from app.models import ApiToken, Job
from app.tokens import create_token, revoke_token
from tests.app.test_artifacts import SPEC, Run, make_job

# Writes that change nothing, open to anyone: (method, path) as in the OpenAPI schema.
OPEN_WRITES = {("post", "/api/specs/validate")}
NOT_DOWNLOADS = {"application/json", "text/event-stream"}
WRITE_METHODS = {"post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def run() -> Run:
    return Run()


def sessions_of(client: TestClient) -> sessionmaker[Session]:
    factory: sessionmaker[Session] = client.app.state.sessions  # type: ignore[attr-defined]
    return factory


def new_token(client: TestClient, name: str) -> str:
    with sessions_of(client)() as session:
        token = create_token(session.connection(), name)
        session.commit()
    return token


def revoke(client: TestClient, name: str) -> None:
    with sessions_of(client)() as session:
        assert revoke_token(session.connection(), name)
        session.commit()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def operations(client: TestClient) -> list[tuple[str, str, bool]]:
    """(method, path template, must need a token) for every operation in the app's schema.

    Event streams are left out: they are reads (open), and one never ends to be checked."""
    out = []
    for path, item in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        for method, op in item.items():
            if method not in WRITE_METHODS | {"get", "head"}:
                continue
            if method in WRITE_METHODS:
                protected = (method, path) not in OPEN_WRITES
            else:
                types = set(op.get("responses", {}).get("200", {}).get("content", {}))
                if "text/event-stream" in types:
                    continue
                protected = bool(types - NOT_DOWNLOADS)
            out.append((method, path, protected))
    return out


def fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"no value for a parameter of {path}: add one to `ids`"
    return path


def call(client: TestClient, method: str, url: str, headers: dict[str, str] | None = None) -> Any:
    if method in ("post", "put", "patch"):
        return client.request(method.upper(), url, headers=headers, json={})
    return client.request(method.upper(), url, headers=headers)


@pytest.fixture
def world(client: TestClient, run: Run) -> dict[str, str]:
    """One of everything a path can name: a job with samples and checkpoints, a dataset, a
    sweep (its trials stay queued: no worker runs here)."""
    job = make_job(client, run)
    sample = client.get(f"/api/jobs/{job}/samples").json()["items"][0]["id"]
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((8, 2), dtype=np.float32))
    dataset = client.post("/api/datasets", files={"file": ("d.npy", buffer.getvalue())})
    assert dataset.status_code == 201, dataset.text
    sweep = client.post(
        "/api/sweeps",
        json={
            "base": {"steps": 10},
            "space": {"optim.g.lr": {"values": [0.001, 0.002]}},
            "method": "grid",
            "objective": {"metric": "eval/hq"},
            "budget": {"trials": 2, "concurrent": 1},
        },
    )
    assert sweep.status_code == 201, sweep.text
    return {
        "sweep_id": sweep.json()["id"],
        "job_id": job,
        "sample_id": str(sample),
        "step": "2",
        "dataset_id": dataset.json()["id"],
    }


def test_every_write_and_download_is_refused_without_a_good_token(
    client: TestClient, world: dict[str, str]
) -> None:
    ops = operations(client)
    protected = {(m, p) for m, p, need in ops if need}
    # The schema holds what is known to need protection (a sanity check of the rule itself).
    assert {
        ("post", "/api/jobs"),
        ("delete", "/api/jobs/{job_id}"),
        ("post", "/api/jobs/{job_id}/cancel"),
        ("post", "/api/jobs/{job_id}/generate"),
        ("post", "/api/datasets"),
        ("get", "/api/jobs/{job_id}/samples.zip"),
        ("get", "/api/jobs/{job_id}/samples/{sample_id}"),
        ("get", "/api/jobs/{job_id}/checkpoints/{step}"),
        ("post", "/api/jobs/{job_id}/checkpoints/{step}/pin"),
        ("delete", "/api/jobs/{job_id}/checkpoints/{step}/pin"),
        ("delete", "/api/jobs/{job_id}/checkpoints/{step}"),
    } <= protected
    assert ("get", "/api/jobs/{job_id}/metrics") not in protected
    assert ("get", "/api/jobs/{job_id}/retention") not in protected  # a read, JSON

    # Before any token exists the service is open: nothing answers 401.
    for method, path, _ in ops:
        if method == "delete":
            continue
        answer = call(client, method, fill(path, world))
        assert answer.status_code != 401, (method, path)

    job_before = client.get(f"/api/jobs/{world['job_id']}").json()
    jobs_before = client.get("/api/jobs").json()["items"]  # the job and the sweep's trial
    sweep_before = client.get(f"/api/sweeps/{world['sweep_id']}").json()
    good = new_token(client, "alice")
    old = new_token(client, "old-laptop")
    revoke(client, "old-laptop")
    wrong = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    refusals = {
        "no token": ({}, "needs a token"),
        "wrong token": (bearer(wrong), "not valid"),
        "not a token": (bearer("hello"), "not valid"),
        "revoked token": (bearer(old), "'old-laptop' was revoked"),
    }
    for method, path, need in ops:
        url = fill(path, world)
        for why, (headers, reason) in refusals.items():
            answer = call(client, method, url, headers)
            if need:
                assert answer.status_code == 401, (why, method, path, answer.text)
                assert reason in answer.json()["detail"], (why, method, path)
                assert answer.headers["www-authenticate"] == "Bearer"
            else:
                assert answer.status_code != 401, (why, method, path, answer.text)
    # Nothing was changed by the refused requests.
    assert client.get(f"/api/jobs/{world['job_id']}").json() == job_before
    assert job_before in jobs_before
    assert client.get("/api/jobs").json()["items"] == jobs_before
    assert client.get(f"/api/sweeps/{world['sweep_id']}").json() == sweep_before
    assert client.get(f"/api/datasets/{world['dataset_id']}").status_code == 200
    # And the good token gets past the guard everywhere (deletes last: they remove things).
    for method, path, need in sorted(ops, key=lambda op: op[0] == "delete"):
        if need:
            answer = call(client, method, fill(path, world), bearer(good))
            assert answer.status_code != 401, (method, path, answer.text)


def test_downloads_work_with_the_token_or_the_dashboards_cookie(
    client: TestClient, run: Run
) -> None:
    job = make_job(client, run)
    sample = client.get(f"/api/jobs/{job}/samples").json()["items"][0]["id"]
    token = new_token(client, "bob")
    downloads = [
        f"/api/jobs/{job}/samples/{sample}",
        f"/api/jobs/{job}/samples.zip",
        f"/api/jobs/{job}/checkpoints/4",
    ]
    for url in downloads:
        assert client.get(url).status_code == 401
        assert client.get(url, headers=bearer(token)).status_code == 200, url
        client.cookies.set(COOKIE, token)
        try:
            assert client.get(url).status_code == 200, url
        finally:
            client.cookies.clear()
    # The cookie never authorizes a write: a cross-site form could send it.
    client.cookies.set(COOKIE, token)
    try:
        assert client.post(f"/api/jobs/{job}/cancel").status_code == 401
        generate = client.post(f"/api/jobs/{job}/generate", json={"n": 4, "format": "npy"})
        assert generate.status_code == 401
    finally:
        client.cookies.clear()
    generate = client.post(
        f"/api/jobs/{job}/generate", json={"n": 4, "format": "npy"}, headers=bearer(token)
    )
    assert generate.status_code == 200, generate.text
    assert np.load(io.BytesIO(generate.content)).shape == (4, 2)


def test_jobs_and_datasets_record_the_token_that_created_them(client: TestClient) -> None:
    spec = {"spec": SPEC.model_dump(mode="json")}
    before = client.post("/api/jobs", json=spec)
    assert before.status_code == 201 and before.json()["created_by"] is None
    token = new_token(client, "ci-runner")
    made = client.post("/api/jobs", json=spec, headers=bearer(token))
    assert made.status_code == 201, made.text
    assert made.json()["created_by"] == "ci-runner"
    assert client.get(f"/api/jobs/{made.json()['id']}").json()["created_by"] == "ci-runner"
    buffer = io.BytesIO()
    np.save(buffer, np.ones((4, 2), dtype=np.float32))
    upload = client.post(
        "/api/datasets", files={"file": ("x.npy", buffer.getvalue())}, headers=bearer(token)
    )
    assert upload.status_code == 201 and upload.json()["created_by"] == "ci-runner"


def test_only_the_sha256_is_stored_and_tokens_are_distinct(client: TestClient) -> None:
    tokens = [new_token(client, f"user{i}") for i in range(3)]
    assert len(set(tokens)) == 3
    with sessions_of(client)() as session:
        rows = {row.name: row for row in session.scalars(select(ApiToken))}
    for i, token in enumerate(tokens):
        row = rows[f"user{i}"]
        assert row.sha256 == hashlib.sha256(token.encode()).hexdigest()
        assert token.split("_")[2] not in (row.sha256, row.prefix, row.name)
        assert token.startswith(f"gf_{row.prefix}_") and len(token) > 40


def test_a_refused_upload_stores_nothing(client: TestClient) -> None:
    new_token(client, "carol")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((16, 2), dtype=np.float32))
    answer = client.post("/api/datasets", files={"file": ("d.npy", buffer.getvalue())})
    assert answer.status_code == 401
    assert client.get("/api/datasets").json()["items"] == []
    root: Path = client.app.state.store.root  # type: ignore[attr-defined]
    assert not (root / "datasets").exists() or not any((root / "datasets").iterdir())


def test_the_auth_endpoint_says_what_the_dashboard_needs_to_know(client: TestClient) -> None:
    assert client.get("/api/auth").json() == {"required": False, "token": None, "error": None}
    token = new_token(client, "dave")
    assert client.get("/api/auth").json() == {"required": True, "token": None, "error": None}
    assert client.get("/api/auth", headers=bearer(token)).json()["token"] == "dave"
    client.cookies.set(COOKIE, token)
    try:
        assert client.get("/api/auth").json()["token"] == "dave"
    finally:
        client.cookies.clear()
    revoke(client, "dave")
    answer = client.get("/api/auth", headers=bearer(token)).json()
    assert answer["token"] is None and "revoked" in answer["error"]
    # Revoking the last token does not open the service.
    assert client.post("/api/jobs", json={"spec": SPEC.model_dump(mode="json")}).status_code == 401
    with sessions_of(client)() as session:
        assert session.scalar(select(Job.id)) is None


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("192.168.1.10", False),
        ("example.org", False),
    ],
)
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def ganforge(*args: str, db: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GANFORGE_DATABASE_URL": f"sqlite:///{db}"}
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_token_commands_and_the_exposure_guard(tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    listed = ganforge("token", "list", db=db)
    assert listed.returncode == 0 and "no tokens" in listed.stdout
    # Listening beyond loopback with no token is refused, for `up` and for `api`.
    for command in ("up", "api"):
        refused = ganforge(command, "--host", "0.0.0.0", "--port", "1", db=db)
        assert refused.returncode == 2, refused.stderr
        assert "--host 0.0.0.0" in refused.stderr and "--insecure" in refused.stderr
    made = ganforge("token", "create", "erin", db=db)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert token.startswith("gf_") and "only time it is shown" in made.stderr
    again = ganforge("token", "create", "erin", db=db)
    assert again.returncode == 2 and "names are not reused" in again.stderr
    bad = ganforge("token", "create", "no spaces", db=db)
    assert bad.returncode == 2 and "name:" in bad.stderr
    listed = ganforge("token", "list", db=db)
    assert "erin" in listed.stdout and token not in listed.stdout
    revoked = ganforge("token", "revoke", "erin", db=db)
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    twice = ganforge("token", "revoke", "erin", db=db)
    assert twice.returncode == 1 and "no valid token named 'erin'" in twice.stderr


def test_tokens_from_the_environment(tmp_path: Path) -> None:
    """GANFORGE_API_TOKENS (DESIGN.md section 7): NAME=TOKEN or NAME=sha256:HEX; either turns
    auth on, names the caller, and is compared by digest like the table's tokens."""
    from app.api import create_app
    from app.db import make_engine, upgrade
    from app.settings import Settings

    url = f"sqlite:///{tmp_path / 'env.db'}"
    upgrade(url)
    plain, hidden = "p" * 32, "h" * 32
    hashed = hashlib.sha256(hidden.encode()).hexdigest()
    settings = Settings(
        database_url=url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_dir=tmp_path / "artifacts",
        api_tokens=f"deploy={plain}, ops=sha256:{hashed}",
    )
    engine = make_engine(url)
    with TestClient(create_app(settings, engine), base_url="http://localhost") as client:
        spec = {"spec": SPEC.model_dump(mode="json")}
        assert client.get("/api/auth").json()["required"] is True
        assert client.post("/api/jobs", json=spec).status_code == 401
        assert client.post("/api/jobs", json=spec, headers=bearer("x" * 32)).status_code == 401
        for token, name in ((plain, "deploy"), (hidden, "ops")):
            made = client.post("/api/jobs", json=spec, headers=bearer(token))
            assert made.status_code == 201 and made.json()["created_by"] == name
    engine.dispose()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("justatoken" * 3, "entry 1: expected NAME=TOKEN"),
        ("a=short", "entry 1 (a): a token of at least 20 characters"),
        ("a=" + "x" * 30 + ",b=sha256:abc", "entry 2 (b): sha256: needs 64 hex digits"),
        ("bad name=" + "x" * 30, "entry 1: expected NAME=TOKEN"),
    ],
)
def test_a_malformed_environment_token_stops_the_settings(raw: str, message: str) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError) as err:
        Settings(api_tokens=raw)
    assert "api_tokens" in str(err.value) and message in str(err.value)
