"""The jobs API on a real database (SQLite and PostgreSQL): create, list, page, get, errors."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.api import create_app
from app.db import make_engine
from app.settings import Settings
from trainer.spec import TrainSpec


def test_create_then_get_a_job_with_defaults_filled_in(client):
    made = client.post("/api/jobs", json={"spec": {"steps": 50}, "tags": ["demo", "demo"]})
    assert made.status_code == 201, made.text
    job = made.json()
    assert job["status"] == "queued" and job["step"] == 0 and job["steps"] == 50
    assert job["spec"] == TrainSpec(steps=50).model_dump(mode="json")
    assert job["tags"] == ["demo"] and job["attempt"] == 0 and job["warnings"] == []
    again = client.get(f"/api/jobs/{job['id']}")
    assert again.status_code == 200 and again.json() == job
    assert job["created_at"].endswith(("+00:00", "Z"))


def test_empty_spec_is_a_valid_job_and_leaky_specs_carry_warnings(client):
    assert client.post("/api/jobs", json={"spec": {}}).status_code == 201
    leaky = {"schedule": {"order": "g_first", "isolation": "none", "zero_grad": "after"}}
    job = client.post("/api/jobs", json={"spec": leaky, "name": "seed bug"}).json()
    assert job["name"] == "seed bug"
    assert any("leaks gradient" in w for w in job["warnings"])


def test_invalid_spec_is_a_422_naming_the_field(client):
    cases = [
        ({"spec": {"accumulation": {"steps": 3}}}, "spec.accumulation.steps", "must divide"),
        ({"spec": {"schedule": {"order": "x"}}}, "spec.schedule.order", "d_first"),
        ({"spec": {"data": {"kind": "array"}}}, "spec.data.dataset_id", "exactly one"),
        ({"spec": {"lr": 1}}, "spec.lr", "unknown field"),
        ({"spec": {}, "priority": 1000}, "priority", "less than or equal to 100"),
        ({}, "spec", "Field required"),
    ]
    for body, field, words in cases:
        answer = client.post("/api/jobs", json=body)
        assert answer.status_code == 422, body
        detail = answer.json()["detail"]
        assert detail[0]["field"] == field, detail
        assert detail[0]["message"].startswith(f"{field}: ") and words in detail[0]["message"]
    assert client.get("/api/jobs").json()["items"] == []  # nothing stored


def test_list_is_newest_first_filters_and_pages(client):
    ids = []
    for i in range(5):
        tags = ["even"] if i % 2 == 0 else ["odd"]
        ids.append(client.post("/api/jobs", json={"spec": {}, "tags": tags}).json()["id"])
    page = client.get("/api/jobs", params={"limit": 2}).json()
    assert [j["id"] for j in page["items"]] == ids[::-1][:2]
    seen = [j["id"] for j in page["items"]]
    while page["next_cursor"]:
        page = client.get("/api/jobs", params={"limit": 2, "cursor": page["next_cursor"]}).json()
        seen += [j["id"] for j in page["items"]]
    assert seen == ids[::-1]
    even = client.get("/api/jobs", params={"tag": "even"}).json()["items"]
    assert [j["id"] for j in even] == [ids[4], ids[2], ids[0]]
    assert client.get("/api/jobs", params={"status": "queued"}).json()["items"]
    assert client.get("/api/jobs", params={"status": "running"}).json()["items"] == []


def test_bad_queries_and_unknown_jobs(client):
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.get("/api/jobs/nope").json()["detail"] == "job nope not found"
    bad = client.get("/api/jobs", params={"status": "sleeping"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "status"
    assert client.get("/api/jobs", params={"cursor": "%%%"}).status_code == 422
    assert client.get("/api/jobs", params={"limit": 0}).json()["detail"][0]["field"] == "limit"


def test_health_reports_the_database_and_the_broker(client):
    answer = client.get("/api/health")
    assert answer.status_code == 200
    assert answer.json() == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
        "broker_kind": "sqla",
        "devices": {},  # no worker has registered GPUs (tests/app/test_devices.py)
    }


def test_health_is_503_naming_an_unreachable_broker(database_url, tmp_path):
    # Nothing listens on port 1: the broker cannot be reached; the database still can.
    settings = Settings(
        database_url=database_url,
        broker_url="redis://127.0.0.1:1/0",
        artifact_dir=tmp_path / "artifacts",
    )
    engine = make_engine(database_url)
    with TestClient(create_app(settings, engine), base_url="http://localhost") as client:
        answer = client.get("/api/health")
        body = answer.json()
        assert answer.status_code == 503 and body["status"] == "degraded"
        assert body["database"] == "ok" and body["broker"].startswith("unreachable")
        # A job cannot be queued: 503 naming the broker, and no job is left behind.
        made = client.post("/api/jobs", json={"spec": {}})
        assert made.status_code == 503 and made.json()["detail"].startswith("broker:")
        assert client.get("/api/jobs").json()["items"] == []
    engine.dispose()


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    assert "/api/jobs" in client.get("/openapi.json").json()["paths"]


def test_non_finite_numbers_in_a_spec_are_a_422_naming_the_field(client):
    # JSON has no Infinity/NaN, but Python's parser (and so FastAPI's) reads them.
    body = '{"spec": {"data": {"radius": Infinity}, "ema": NaN}}'
    answer = client.post("/api/jobs", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422
    fields = {d["field"]: d["message"] for d in answer.json()["detail"]}
    assert "finite" in fields["spec.data.radius"] and "finite" in fields["spec.ema"]
    assert client.get("/api/jobs").json()["items"] == []


def test_a_body_that_is_not_a_json_object_is_a_422_naming_the_body(client):
    for body in ("{not json", "[1, 2]"):
        answer = client.post(
            "/api/jobs", content=body, headers={"content-type": "application/json"}
        )
        assert answer.status_code == 422, body
        detail = answer.json()["detail"][0]
        assert detail["field"] == "body" and detail["message"].startswith("body: "), detail


def test_a_nul_byte_in_an_id_is_never_a_500(client):
    for path in (
        "/api/jobs/a%00b",
        "/api/jobs/a%00b/metrics",
        "/api/datasets/a%00b",
        "/jobs/a%00b",
    ):
        assert client.get(path).status_code in (404, 422), path
    bad = client.post(
        "/api/jobs", json={"spec": {"data": {"kind": "array", "dataset_id": "a\x00"}}}
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "spec.data.dataset_id"


def test_specs_beyond_the_servers_resource_limits_are_a_422_naming_the_field(
    database_url, tmp_path
):
    settings = Settings(
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_dir=tmp_path / "artifacts",
        max_steps=1000,
        max_width=64,
    )
    engine = make_engine(database_url)
    with TestClient(create_app(settings, engine), base_url="http://localhost") as client:
        spec = {"steps": 5000, "model": {"width": 128}}
        for path in ("/api/jobs", "/api/specs/validate"):
            answer = client.post(path, json={"spec": spec})
            assert answer.status_code == 422, path
            fields = {d["field"]: d["message"] for d in answer.json()["detail"]}
            assert fields["spec.steps"] == (
                "spec.steps: at most 1000 on this server (GANFORGE_MAX_STEPS), got 5000"
            )
            assert "GANFORGE_MAX_WIDTH" in fields["spec.model.width"]
        assert client.get("/api/jobs").json()["items"] == []
        ok = client.post("/api/jobs", json={"spec": {"steps": 1000, "model": {"width": 64}}})
        assert ok.status_code == 201
    engine.dispose()
