"""Browser-facing safety through a real server (app/hostguard.py, DESIGN.md section 13).

A page the user visits must not drive a local ganforge: by DNS rebinding its requests carry
the page's own `Host`, and a cross-site request carries its `Origin`. The operations are read
from the server's own OpenAPI schema, so a route added later is covered (or this test names
the route it has no request for). Each is called with a foreign Host (a 400, nothing stored,
nothing deleted), each write with a foreign Origin or Referer (a 403, the same), and then the
same requests with the server's own Host and Origin, which are served.
"""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import pytest

from tests.service.conftest import ROOT, Service, _free_port, running_service, tiny_spec

EVIL = "evil.example"
PAGES = ("/", "/jobs/new", "/compare")
# Not in the schema, served all the same: each must refuse a foreign Host too.
UNLISTED_GETS = (
    "/",
    "/jobs/new",
    "/compare",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/static/js/common.js",
)
# A job that stays queued on this service: its worker has no GPU queue.
QUEUED_SPEC = tiny_spec(device="cuda", resources={"gpus": 1})
# A sweep whose trials stay queued for the same reason.
QUEUED_SWEEP = {
    "base": QUEUED_SPEC,
    "space": {"optim.g.lr": {"values": [0.001, 0.002]}},
    "method": "grid",
    "objective": {"metric": "eval/hq"},
    "budget": {"trials": 2, "concurrent": 1},
}


@dataclass
class Seeded:
    """A service with a finished job (samples, checkpoints), a queued one, a dataset and a
    sweep whose trial stays queued."""

    service: Service
    done: str
    queued: str
    dataset: str
    sample: str
    step: int
    sweep: str

    @property
    def host(self) -> str:
        return self.service.url.removeprefix("http://")


def _npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seeded]:
    with running_service(tmp_path_factory.mktemp("browser-safety")) as service:
        with service.client() as client:
            done = client.post("/api/jobs", json={"spec": tiny_spec()}).json()["id"]
            queued = client.post("/api/jobs", json={"spec": QUEUED_SPEC}).json()["id"]
            dataset = client.post("/api/datasets", files={"file": ("points.npy", _npy())}).json()[
                "id"
            ]
            service.wait_for(done, ("succeeded",))
            sample = client.get(f"/api/jobs/{done}/samples").json()["items"][0]["id"]
            step = client.get(f"/api/jobs/{done}/checkpoints").json()["items"][-1]["step"]
            sweep = client.post("/api/sweeps", json=QUEUED_SWEEP).json()["id"]
            # The sweep's controller enqueues its first trial on a later pass: wait for it, so
            # that no test's before/after snapshot can see the trial appear in between.
            deadline = time.monotonic() + 60
            while not client.get(f"/api/sweeps/{sweep}").json()["trials"]:
                assert time.monotonic() < deadline, "the sweep enqueued no trial in 60 s"
                time.sleep(0.2)
        yield Seeded(service, done, queued, dataset, str(sample), int(step), sweep)


def requests_for(s: Seeded) -> dict[tuple[str, str], dict[str, Any]]:
    """A request that the server serves, for every operation in its schema: (method, path
    template) -> httpx arguments and the status it answers (writes last, deletes at the end)."""
    job = f"/api/jobs/{s.done}"
    return {
        ("GET", "/api/jobs"): {"expect": 200},
        ("GET", "/api/jobs/{job_id}"): {"url": job, "expect": 200},
        ("GET", "/api/health"): {"expect": 200},
        ("GET", "/api/health/live"): {"expect": 200},
        ("GET", "/api/jobs/{job_id}/metrics"): {"url": f"{job}/metrics", "expect": 200},
        ("GET", "/api/jobs/{job_id}/samples"): {"url": f"{job}/samples", "expect": 200},
        ("GET", "/api/jobs/{job_id}/samples.zip"): {"url": f"{job}/samples.zip", "expect": 200},
        ("GET", "/api/jobs/{job_id}/samples/{sample_id}"): {
            "url": f"{job}/samples/{s.sample}",
            "expect": 200,
        },
        ("GET", "/api/jobs/{job_id}/checkpoints"): {"url": f"{job}/checkpoints", "expect": 200},
        ("GET", "/api/jobs/{job_id}/checkpoints/{step}"): {
            "url": f"{job}/checkpoints/{s.step}",
            "expect": 200,
        },
        ("GET", "/api/jobs/{job_id}/events"): {"url": f"{job}/events", "expect": 200},
        ("GET", "/api/jobs/{job_id}/retention"): {"url": f"{job}/retention", "expect": 200},
        ("GET", "/api/datasets"): {"expect": 200},
        ("GET", "/api/datasets/{dataset_id}"): {"url": f"/api/datasets/{s.dataset}", "expect": 200},
        ("GET", "/api/datasets/{dataset_id}/preview.png"): {
            "url": f"/api/datasets/{s.dataset}/preview.png",
            "expect": 200,
        },
        ("GET", "/api/specs/defaults"): {"expect": 200},
        ("GET", "/api/presets"): {"expect": 200},
        ("GET", "/api/auth"): {"expect": 200},
        ("GET", "/api/sweeps"): {"expect": 200},
        ("GET", "/api/sweeps/{sweep_id}"): {"url": f"/api/sweeps/{s.sweep}", "expect": 200},
        ("POST", "/api/specs/validate"): {"json": {"spec": {"steps": 10}}, "expect": 200},
        ("POST", "/api/jobs"): {"json": {"spec": QUEUED_SPEC, "tags": ["x"]}, "expect": 201},
        ("POST", "/api/jobs/{job_id}/generate"): {
            "url": f"{job}/generate",
            "json": {"n": 4, "seed": 0},
            "expect": 200,
        },
        ("POST", "/api/datasets"): {"files": {"file": ("more.npy", _npy())}, "expect": 201},
        ("POST", "/api/sweeps"): {"json": QUEUED_SWEEP, "expect": 201},
        ("POST", "/api/sweeps/{sweep_id}/cancel"): {
            "url": f"/api/sweeps/{s.sweep}/cancel",
            "expect": 200,
        },
        ("PATCH", "/api/jobs/{job_id}"): {
            "url": f"/api/jobs/{s.queued}",
            "json": {"priority": 5},
            "expect": 200,
        },
        ("POST", "/api/jobs/{job_id}/cancel"): {
            "url": f"/api/jobs/{s.queued}/cancel",
            "expect": 200,
        },
        ("POST", "/api/jobs/{job_id}/resume"): {
            "url": f"/api/jobs/{s.queued}/resume",
            "expect": 200,
        },
        ("POST", "/api/jobs/{job_id}/checkpoints/{step}/pin"): {
            "url": f"{job}/checkpoints/{s.step}/pin",
            "expect": 200,
        },
        ("DELETE", "/api/jobs/{job_id}/checkpoints/{step}/pin"): {
            "url": f"{job}/checkpoints/{s.step}/pin",
            "expect": 200,
        },
        # The finished job's newest checkpoint (after generate, which uses it).
        ("DELETE", "/api/jobs/{job_id}/checkpoints/{step}"): {
            "url": f"{job}/checkpoints/{s.step}",
            "expect": 204,
        },
        ("DELETE", "/api/datasets/{dataset_id}"): {
            "url": f"/api/datasets/{s.dataset}",
            "expect": 204,
        },
        ("DELETE", "/api/sweeps/{sweep_id}"): {"url": f"/api/sweeps/{s.sweep}", "expect": 204},
        ("DELETE", "/api/jobs/{job_id}"): {"url": job, "expect": 204},
    }


def schema_operations(s: Seeded) -> set[tuple[str, str]]:
    with s.service.client() as client:
        paths = client.get("/openapi.json").json()["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item}


def send(client: httpx2.Client, key: tuple[str, str], args: dict[str, Any], **headers: str):
    method, template = key
    kwargs = {k: v for k, v in args.items() if k in ("json", "files")}
    url = args.get("url", template)
    if url.endswith("/events"):  # a stream: its status line is enough
        with client.stream(method, url, headers=headers) as answer:
            if answer.status_code != 200:
                answer.read()
            return answer
    return client.request(method, url, headers=headers, **kwargs)


def state(s: Seeded) -> dict[str, Any]:
    """What a foreign request could change: the jobs (status, tags), datasets, stored files."""
    with s.service.client() as client:
        jobs = client.get("/api/jobs", params={"limit": 500}).json()["items"]
        datasets = client.get("/api/datasets").json()
        sweeps = client.get("/api/sweeps").json()["items"]
    root = s.service.workdir / "artifacts"
    files = sorted(
        (str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*") if p.is_file()
    )
    return {
        "jobs": sorted((j["id"], j["status"], tuple(j["tags"]), j["priority"]) for j in jobs),
        "datasets": datasets,
        "sweeps": sorted((w["id"], w["status"]) for w in sweeps),
        "files": files,
    }


def test_every_operation_in_the_schema_has_a_request(seeded: Seeded) -> None:
    missing = schema_operations(seeded) - set(requests_for(seeded))
    assert not missing, f"no request in this test for {sorted(missing)}: add one"


@pytest.mark.parametrize(
    "host",
    [f"{EVIL}:PORT", EVIL, "127.0.0.1.nip.example:PORT", "localhost.evil.example:PORT"],
)
def test_a_foreign_host_is_refused_on_every_route_and_nothing_changes(
    seeded: Seeded, host: str
) -> None:
    host = host.replace("PORT", seeded.host.rsplit(":", 1)[1])
    before = state(seeded)
    with httpx2.Client(base_url=seeded.service.url, timeout=30) as client:
        operations = list(requests_for(seeded).items())
        operations += [(("GET", path), {}) for path in UNLISTED_GETS]
        for key, args in operations:
            answer = send(client, key, args, host=host)
            assert answer.status_code == 400, (key, host, answer.status_code)
            detail = answer.json()["detail"]
            assert "GANFORGE_ALLOWED_HOSTS" in detail and repr(host) in detail, detail
            assert answer.headers["x-content-type-options"] == "nosniff"
    assert state(seeded) == before


@pytest.mark.parametrize(
    "headers",
    [
        {"origin": f"http://{EVIL}"},
        {"origin": f"http://{EVIL}:PORT"},
        {"origin": "null"},  # a sandboxed frame, a file:// page
        {"origin": "http://127.0.0.1:1"},  # the same machine, another port: another origin
        {"referer": f"http://{EVIL}/attack.html"},
        {"origin": f"https://{EVIL}", "referer": "http://127.0.0.1:PORT/"},  # Origin decides
    ],
    ids=["origin", "origin-port", "null", "other-port", "referer", "origin-over-referer"],
)
def test_a_write_from_a_foreign_origin_is_refused_and_nothing_changes(
    seeded: Seeded, headers: dict[str, str]
) -> None:
    port = seeded.host.rsplit(":", 1)[1]
    headers = {k: v.replace("PORT", port) for k, v in headers.items()}
    before = state(seeded)
    writes = [(k, a) for k, a in requests_for(seeded).items() if k[0] != "GET"]
    assert len(writes) >= 8
    with seeded.service.client() as client:
        for key, args in writes:
            answer = send(client, key, args, **headers)
            assert answer.status_code == 403, (key, headers, answer.status_code, answer.text)
            assert answer.json()["detail"].startswith("origin: "), answer.text
    assert state(seeded) == before


def test_reads_with_a_foreign_origin_are_served(seeded: Seeded) -> None:
    # A cross-site read gets no CORS header, so the page cannot see it; only writes act.
    with seeded.service.client() as client:
        answer = client.get("/api/jobs", headers={"origin": f"http://{EVIL}"})
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_the_same_requests_with_the_servers_own_host_and_origin_are_served(
    seeded: Seeded,
) -> None:
    port = seeded.host.rsplit(":", 1)[1]
    names = [f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"]
    with seeded.service.client() as client:
        for i, (key, args) in enumerate(requests_for(seeded).items()):
            host = names[i % len(names)]
            headers = {"host": host}
            if key[0] != "GET" and i % 2:
                headers["origin"] = f"http://{host}"
            elif key[0] != "GET":
                headers["referer"] = f"http://{host}/jobs/new"
            answer = send(client, key, args, **headers)
            assert answer.status_code == args["expect"], (key, headers, answer.text)
        for path in UNLISTED_GETS:
            assert client.get(path, headers={"host": f"localhost:{port}"}).status_code == 200
    with seeded.service.client() as client:
        assert client.get(f"/api/jobs/{seeded.done}").status_code == 404  # it was deleted


def test_every_response_says_nosniff_and_no_framing_and_pages_carry_the_csp(
    seeded: Seeded,
) -> None:
    with seeded.service.client() as client:
        for path in (*PAGES, f"/jobs/{seeded.queued}", f"/compare?ids={seeded.queued}"):
            answer = client.get(path)
            assert answer.status_code == 200, path
            assert answer.headers["content-type"].startswith("text/html")
            csp = answer.headers["content-security-policy"]
            directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
            assert directives["frame-ancestors"] == ["'none'"], csp
            assert directives["script-src"] == ["'self'"], csp
            assert directives["default-src"] == ["'self'"], csp
            assert answer.headers["x-frame-options"] == "DENY"
            assert answer.headers["x-content-type-options"] == "nosniff"
        for path in ("/api/jobs", "/api/health", "/metrics", "/static/js/common.js", "/docs"):
            answer = client.get(path)
            assert answer.headers["x-content-type-options"] == "nosniff", path
            assert answer.headers["x-frame-options"] == "DENY", path
            assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], path
        assert "javascript" in client.get("/static/js/common.js").headers["content-type"]


# ---- the setting ------------------------------------------------------------------------


@contextmanager
def api_server(workdir: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """`ganforge api` alone (no worker) on SQLite; yields its loopback URL."""
    port = _free_port()
    log = workdir / f"api-{port}.log"
    full_env = {
        **os.environ,
        "GANFORGE_DATABASE_URL": f"sqlite:///{workdir / 'api.db'}",
        "GANFORGE_BROKER_URL": f"sqla+sqlite:///{workdir / 'broker.db'}",
        "GANFORGE_ARTIFACT_DIR": str(workdir / "artifacts"),
        **(env or {}),
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", str(port), *args],
            cwd=ROOT,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx2.get(url + "/api/auth", timeout=2).status_code == 200:
                    break
            except httpx2.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def status_for(url: str, host: str) -> int:
    return httpx2.get(url + "/api/jobs", headers={"host": host}, timeout=10).status_code


def test_allowed_hosts_adds_names_and_subdomains(tmp_path: Path) -> None:
    env = {"GANFORGE_ALLOWED_HOSTS": "gan.example.com, *.lab.example"}
    with api_server(tmp_path, env=env) as url:
        assert status_for(url, "gan.example.com") == 200
        assert status_for(url, "GAN.example.com.:8443") == 200
        assert status_for(url, "a.lab.example") == 200
        assert status_for(url, "localhost") == 200
        assert status_for(url, "lab.example.evil") == 400
        assert status_for(url, "gan.example.com.evil") == 400
        detail = httpx2.get(url + "/api/jobs", headers={"host": EVIL}).json()["detail"]
        assert "gan.example.com" in detail and "*.lab.example" in detail, detail


def test_a_wildcard_host_needs_tokens(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "GANFORGE_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
        "GANFORGE_ALLOWED_HOSTS": "*",
    }
    refused = subprocess.run(
        [sys.executable, "-m", "app.cli", "api", "--port", str(_free_port())],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2, refused.stderr
    assert "GANFORGE_ALLOWED_HOSTS=*" in refused.stderr and "token" in refused.stderr
    token = "gf_abcdefgh_" + "s" * 30
    with api_server(
        tmp_path, env={"GANFORGE_ALLOWED_HOSTS": "*", "GANFORGE_API_TOKENS": f"ops={token}"}
    ) as url:
        assert status_for(url, "anything.example") == 200
        # A foreign Origin is still refused, token or not.
        answer = httpx2.post(
            url + "/api/jobs",
            json={"spec": QUEUED_SPEC},
            headers={"origin": f"http://{EVIL}", "authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 403, answer.text


def test_a_wildcard_bind_serves_its_own_names(tmp_path: Path) -> None:
    name = socket.gethostname()
    with api_server(tmp_path, "--host", "0.0.0.0", "--insecure") as url:
        assert status_for(url, f"{name}:80") == 200
        assert status_for(url, "127.0.0.1") == 200
        assert status_for(url, EVIL) == 400
    log = next(tmp_path.glob("api-*.log")).read_text()
    served = next(line for line in log.splitlines() if line.startswith("serving Host names:"))
    assert name.lower() in served.removesuffix(" (more: GANFORGE_ALLOWED_HOSTS)").split(", "), (
        served
    )
