"""Job service benchmark (not a test): what the service adds on top of the trainer.

    python bench/service.py [--section latency|rps|walltime|all] [--backend embedded|redis|both]
                            [--write docs/benchmarks.md]

Backends: `embedded` is SQLite + kombu's SQLAlchemy broker on a SQLite file (what
`ganforge up` uses by default); `redis` is a fresh PostgreSQL database (created, then
dropped; admin URL from GANFORGE_TEST_POSTGRES_URL) + Redis (GANFORGE_TEST_REDIS_URL), with
a queue prefix of its own. Every server runs in a subprocess, as a user starts it.

- latency: submit-to-running. `ganforge up --threads 1`; after one warm-up job (so the
  worker is up), `--jobs` tiny jobs one after another, each submitted when the previous one
  has finished (the worker is idle). Latency is the job's `started_at` (the worker's claim)
  minus the client's clock just before the POST (same machine, same clock), and minus the
  job's `created_at`. Goal: median under 0.5 s on Redis, under 2 s embedded.
- rps: GET /api/jobs/{id} requests/s of `ganforge api --no-migrate` (on each backend's
  database) against a bare FastAPI app returning the same JSON, once from a sync endpoint
  and once from an async one (the job route is async), under the same uvicorn defaults (one
  process, default loop), each loaded by `wrk -t1 -c8` in its own process; targets
  alternate in rounds. Goal: ratio at least 0.7 to the sync endpoint (the baseline issue 10
  set); the ratio to the async endpoint, the dearer comparison, is printed beside it.
- walltime: examples/default.yaml with `--steps` steps, `ganforge train SPEC --out DIR`
  (wall time of the whole command) against the same spec submitted to a running
  `ganforge up --threads T` (T: torch's default thread count, what `train` uses), from the
  POST until the client sees `succeeded`. Runs alternate train, service per backend, ...
  Each service is started fresh (and warmed up with a tiny job) before its run and stopped
  after it, so nothing of the service runs while `train` is timed. Wall times on a shared
  2-core machine swing with other load, so the verdict compares the best (shortest) of the
  rounds of each. Goal: service <= 1.05 x train + 3 s.

The 1-, 5- and 15-minute load averages are recorded beside each figure: other work on the
machine shows in them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import replace_section  # noqa: E402

PY = sys.executable
REDIS_URL = os.environ.get("GANFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
FINISHED = ("succeeded", "failed", "cancelled")
TINY_SPEC: dict[str, Any] = {
    "steps": 5,
    "batch_size": 32,
    "model": {"width": 16, "depth": 2, "latent_dim": 4},
    "every": {"metrics": 5, "samples": 0, "checkpoint": 0, "eval": 0},
}
LATENCY_GOAL = {"embedded": 2.0, "redis": 0.5}
RPS_GOAL = 0.7
BARE_TARGETS = {"bare-sync": "/x", "bare-async": "/y"}  # name: path
BARE_LABEL = {"bare-sync": "sync endpoint", "bare-async": "async endpoint"}
BACKEND_LABEL = {"embedded": "SQLite + SQLite broker", "redis": "PostgreSQL + Redis"}


@dataclass
class Row:
    section: str
    what: str
    figure: str
    goal: str
    met: str
    load: str


def load() -> str:
    """The load averages (1, 5, 15 minutes), as `uptime` shows them."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


# --- processes -------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc; the supervisor's children have sessions of
    their own, so they are not in its process group)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop(process: subprocess.Popen[bytes], grace: float = 40.0) -> None:
    """SIGTERM (the supervisor stops its children in order), then SIGKILL what is left."""
    below = descendants(process.pid)
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    for pid in below:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def spawned(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> Iterator[Any]:
    with log.open("ab") as out:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield process
    finally:
        stop(process)


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx2.get(url, timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up; log:\n{log.read_text()[-3000:]}")


# --- backends --------------------------------------------------------------------------------


@contextlib.contextmanager
def backend_env(backend: str, workdir: Path) -> Iterator[dict[str, str]]:
    """The environment of a service on `backend`, its database and queues removed after."""
    workdir.mkdir(parents=True, exist_ok=True)
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    env = {
        **os.environ,
        "GANFORGE_ARTIFACT_DIR": str(workdir / "artifacts"),
        "GANFORGE_QUEUE_PREFIX": prefix,
        "PYTHONUNBUFFERED": "1",
    }
    if backend == "embedded":
        env["GANFORGE_DATABASE_URL"] = f"sqlite:///{workdir / 'ganforge.db'}"
        env["GANFORGE_BROKER_URL"] = f"sqla+sqlite:///{workdir / 'broker.db'}"
        yield env
        return
    from tests.app.conftest import _fresh_postgres

    databases = _fresh_postgres()
    env["GANFORGE_DATABASE_URL"] = next(databases)
    env["GANFORGE_BROKER_URL"] = REDIS_URL
    try:
        yield env
    finally:
        for _ in databases:  # drops the database
            pass
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in list(client.scan_iter(match=f"*{prefix}*")):
            client.delete(key)
        client.close()


@contextlib.contextmanager
def service(env: dict[str, str], workdir: Path, threads: int) -> Iterator[str]:
    """`ganforge up` on `env`, healthy and with its worker ready (one tiny job has run)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = workdir / "service.log"
    argv = [PY, "-m", "app.cli", "up", "--port", str(port), "--threads", str(threads)]
    with spawned(argv, env, log) as process:
        wait_http(f"{url}/api/health", process, log)
        with httpx2.Client(base_url=url, timeout=30) as client:
            warm = submit(client, TINY_SPEC)
            job = wait_job(client, warm["id"], timeout=120)
            if job["status"] != "succeeded":
                raise RuntimeError(f"warm-up job {job['status']}: {job['error']}")
        yield url


def submit(client: httpx2.Client, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/api/jobs", json={"spec": spec})
    if response.status_code != 201:
        raise RuntimeError(f"POST /api/jobs: {response.status_code} {response.text}")
    job: dict[str, Any] = response.json()
    return job


def wait_job(
    client: httpx2.Client, job_id: str, timeout: float = 600, interval: float = 0.05
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] in FINISHED:
            return job
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {job['status']} after {timeout} s")
        time.sleep(interval)


def when(value: str) -> datetime:
    return datetime.fromisoformat(value)


# --- 1. submit-to-running latency ------------------------------------------------------------


def bench_latency(backend: str, jobs: int, scratch: Path) -> list[Row]:
    workdir = scratch / f"latency-{backend}"
    from_post: list[float] = []
    from_created: list[float] = []
    before = load()
    with backend_env(backend, workdir) as env, service(env, workdir, threads=1) as url:
        with httpx2.Client(base_url=url, timeout=30) as client:
            for _ in range(jobs):
                posted = datetime.now(UTC)
                job = submit(client, TINY_SPEC)
                done = wait_job(client, job["id"])
                if done["status"] != "succeeded":
                    raise RuntimeError(f"job {job['id']} {done['status']}: {done['error']}")
                started = when(done["started_at"])
                from_post.append((started - posted).total_seconds())
                from_created.append((started - when(done["created_at"])).total_seconds())
    after = load()
    goal = LATENCY_GOAL[backend]
    median, p90 = statistics.median(from_post), percentile(from_post, 0.9)
    median_c, p90_c = statistics.median(from_created), percentile(from_created, 0.9)
    met = "yes" if median < goal else "no"
    print(
        f"latency {backend}: POST -> started median {median:.3f} s, p90 {p90:.3f} s "
        f"(max {max(from_post):.3f}); created_at -> started median {median_c:.3f} s, "
        f"p90 {p90_c:.3f} s; {jobs} jobs. Goal: median under {goal} s: {met}. "
        f"Load {before} -> {after}",
        flush=True,
    )
    print("  POST -> started (s):", " ".join(f"{x:.3f}" for x in from_post), flush=True)
    return [
        Row(
            "submit-to-running latency",
            f"{BACKEND_LABEL[backend]}, {jobs} jobs",
            f"POST: median {median:.3f} s, p90 {p90:.3f} s; "
            f"created_at: median {median_c:.3f} s, p90 {p90_c:.3f} s",
            f"median < {goal} s",
            met,
            f"{before} -> {after}",
        )
    ]


# --- 2. GET /api/jobs/{id} requests/s ---------------------------------------------------------

BARE_APP = '''"""A bare FastAPI app: a job-sized dict from a sync (/x) and an async (/y) route."""

import json

from fastapi import FastAPI

app = FastAPI()
BODY = json.loads({body!r})


@app.get("/x")
def x():
    return BODY


@app.get("/y")
async def y():
    return BODY
'''


def wrk(url: str, seconds: int, connections: int) -> tuple[float, int]:
    """Requests/s and the number of requests of one wrk run."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (apt-get install -y wrk)")
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk on {url} saw errors:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if rate is None or count is None:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    return float(rate.group(1)), int(count.group(1))


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def bench_rps(
    backends: list[str], seconds: int, rounds: int, connections: int, scratch: Path
) -> list[Row]:
    targets: dict[str, tuple[str, int]] = {}  # name: (url, server pid)
    body: str | None = None
    before = load()
    with contextlib.ExitStack() as stack:
        for backend in backends:
            workdir = scratch / f"rps-{backend}"
            env = stack.enter_context(backend_env(backend, workdir))
            subprocess.run(
                [PY, "-m", "app.cli", "db", "upgrade"],
                cwd=ROOT,
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            port = free_port()
            log = workdir / "api.log"
            argv = [PY, "-m", "app.cli", "api", "--no-migrate", "--port", str(port)]
            process = stack.enter_context(spawned(argv, env, log))
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/api/health", process, log)
            with httpx2.Client(base_url=url, timeout=30) as client:
                job = submit(client, TINY_SPEC)  # stays queued: no worker consumes it
                body = client.get(f"/api/jobs/{job['id']}").text
            targets[backend] = (f"{url}/api/jobs/{job['id']}", process.pid)
        assert body is not None
        bare_dir = scratch / "rps-bare"
        bare_dir.mkdir(parents=True, exist_ok=True)
        (bare_dir / "bare_app.py").write_text(BARE_APP.format(body=body))
        for name, path in BARE_TARGETS.items():  # one server process each
            port = free_port()
            log = bare_dir / f"{name}.log"
            argv = [PY, "-m", "uvicorn", "bare_app:app", "--host", "127.0.0.1"]
            argv += ["--port", str(port)]
            process = stack.enter_context(spawned(argv, dict(os.environ), log, cwd=bare_dir))
            wait_http(f"http://127.0.0.1:{port}{path}", process, log)
            targets[name] = (f"http://127.0.0.1:{port}{path}", process.pid)
        print(f"rps: response body {len(body)} bytes on every target", flush=True)
        for url, _ in targets.values():  # warm-up
            wrk(url, 2, connections)
        rates: dict[str, list[float]] = {name: [] for name in targets}
        cpu: dict[str, list[float]] = {name: [] for name in targets}
        for r in range(rounds):
            for name, (url, pid) in targets.items():
                before_cpu = cpu_seconds(pid)
                rate, count = wrk(url, seconds, connections)
                rates[name].append(rate)
                cpu[name].append(1000 * (cpu_seconds(pid) - before_cpu) / count)
                print(
                    f"  round {r + 1} {name}: {rate:.0f} req/s, server CPU "
                    f"{cpu[name][-1]:.2f} ms/request (load {load()})",
                    flush=True,
                )
    after = load()
    rows = []
    bare = {name: statistics.median(rates[name]) for name in BARE_TARGETS}
    bare_cpu = {name: statistics.median(cpu[name]) for name in BARE_TARGETS}
    for name in BARE_TARGETS:
        rows.append(
            Row(
                "GET /api/jobs/{id} req/s",
                f"bare FastAPI app (same JSON), {BARE_LABEL[name]}",
                f"{bare[name]:.0f} req/s (rounds: {', '.join(f'{x:.0f}' for x in rates[name])}); "
                f"server CPU {bare_cpu[name]:.2f} ms/request",
                "",
                "",
                f"{before} -> {after}",
            )
        )
    for backend in backends:
        rate = statistics.median(rates[backend])
        per_request = statistics.median(cpu[backend])
        ratios = {name: rate / bare[name] for name in BARE_TARGETS}
        ratio = ratios["bare-sync"]  # the verdict's baseline (issue 10); async is shown too
        met = "yes" if ratio >= RPS_GOAL else "no"
        against = "; ".join(
            f"{ratios[name]:.2f} x {BARE_LABEL[name]} ({bare[name]:.0f} req/s)"
            for name in BARE_TARGETS
        )
        print(
            f"rps {backend}: {rate:.0f} req/s, ratio {against} (server CPU {per_request:.2f} "
            f"ms/request). Goal: ratio >= {RPS_GOAL} to the sync endpoint: {met}. "
            f"Load {before} -> {after}",
            flush=True,
        )
        rows.append(
            Row(
                "GET /api/jobs/{id} req/s",
                f"`ganforge api`, {BACKEND_LABEL[backend]}",
                f"{rate:.0f} req/s (rounds: {', '.join(f'{x:.0f}' for x in rates[backend])}); "
                f"ratio {against}; server CPU {per_request:.2f} ms/request",
                f"ratio >= {RPS_GOAL} to the sync endpoint",
                met,
                f"{before} -> {after}",
            )
        )
    return rows


# --- 3. a job's wall time through the service against `ganforge train` ------------------------


def torch_threads() -> int:
    out = subprocess.run(
        [PY, "-c", "import torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def bench_walltime(backends: list[str], steps: int, rounds: int, scratch: Path) -> list[Row]:
    spec = yaml.safe_load((ROOT / "examples" / "default.yaml").read_text()) or {}
    spec["steps"] = steps
    spec_path = scratch / "walltime-spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    threads = torch_threads()
    print(f"walltime: {spec_path} ({steps} steps); worker --threads {threads}", flush=True)
    train: list[tuple[float, str]] = []
    served: dict[str, list[tuple[float, str]]] = {b: [] for b in backends}
    for r in range(rounds):
        out = scratch / f"train-{r}"
        started = time.perf_counter()
        with (scratch / f"train-{r}.log").open("wb") as log:
            subprocess.run(
                [PY, "-m", "app.cli", "train", str(spec_path), "--out", str(out)],
                cwd=ROOT,
                check=True,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        train.append((time.perf_counter() - started, load()))
        print(f"  round {r + 1} train: {train[-1][0]:.1f} s (load {train[-1][1]})", flush=True)
        for backend in backends:
            workdir = scratch / f"walltime-{backend}-{r}"
            with backend_env(backend, workdir) as env, service(env, workdir, threads) as url:
                with httpx2.Client(base_url=url, timeout=30) as client:
                    started = time.perf_counter()
                    job = submit(client, spec)
                    done = wait_job(client, job["id"], interval=0.2)
                    wall = time.perf_counter() - started
                    if done["status"] != "succeeded":
                        raise RuntimeError(f"job {job['id']} {done['status']}: {done['error']}")
            served[backend].append((wall, load()))
            print(
                f"  round {r + 1} service {backend}: {wall:.1f} s (load {served[backend][-1][1]})",
                flush=True,
            )
    best_train = min(wall for wall, _ in train)
    limit = 1.05 * best_train + 3
    rows = [
        Row(
            "job wall time",
            f"`ganforge train`, round {r + 1}",
            f"{wall:.1f} s",
            "",
            "",
            when_load,
        )
        for r, (wall, when_load) in enumerate(train)
    ]
    for backend in backends:
        for r, (wall, when_load) in enumerate(served[backend]):
            print(
                f"walltime {backend} round {r + 1}: service {wall:.1f} s vs train "
                f"{train[r][0]:.1f} s in the same round (x{wall / train[r][0]:.3f})",
                flush=True,
            )
            rows.append(
                Row(
                    "job wall time",
                    f"service, {BACKEND_LABEL[backend]}, round {r + 1}",
                    f"{wall:.1f} s ({wall / train[r][0]:.2f} x this round's train)",
                    "",
                    "",
                    when_load,
                )
            )
        best = min(wall for wall, _ in served[backend])
        met = "yes" if best <= limit else "no"
        print(
            f"walltime {backend}: best of {rounds}: service {best:.1f} s vs train "
            f"{best_train:.1f} s (x{best / best_train:.3f}). Goal: service <= 1.05 x train "
            f"+ 3 s = {limit:.1f} s: {met}",
            flush=True,
        )
        rows.append(
            Row(
                "job wall time",
                f"service, {BACKEND_LABEL[backend]}: best of {rounds} against train's best",
                f"{best:.1f} s vs {best_train:.1f} s ({best / best_train:.2f} x)",
                f"<= 1.05 x {best_train:.1f} + 3 = {limit:.1f} s",
                met,
                "",
            )
        )
    return rows


# --- main ------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    lines = [
        "| benchmark | what | figure | goal | met | load (1 / 5 / 15 min) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.section} | {r.what} | {r.figure} | {r.goal} | {r.met} | {r.load} |" for r in rows
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=["latency", "rps", "walltime", "all"], default="all")
    parser.add_argument("--backend", choices=["embedded", "redis", "both"], default="both")
    parser.add_argument("--jobs", type=int, default=20, help="latency: jobs per backend")
    parser.add_argument("--seconds", type=int, default=10, help="rps: wrk duration per run")
    parser.add_argument("--rps-rounds", type=int, default=2, help="rps: rounds of all targets")
    parser.add_argument("--connections", type=int, default=8, help="rps: wrk connections")
    parser.add_argument("--steps", type=int, default=1500, help="walltime: steps of the spec")
    parser.add_argument("--rounds", type=int, default=3, help="walltime: train/service rounds")
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args()

    backends = ["embedded", "redis"] if args.backend == "both" else [args.backend]
    sections = ["latency", "rps", "walltime"] if args.section == "all" else [args.section]
    print(f"cores {os.cpu_count()}, load {load()}", flush=True)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-service-") as tmp:
        scratch = Path(tmp)
        if "latency" in sections:
            for backend in backends:
                rows += bench_latency(backend, args.jobs, scratch)
        if "rps" in sections:
            rows += bench_rps(backends, args.seconds, args.rps_rounds, args.connections, scratch)
        if "walltime" in sections:
            rows += bench_walltime(backends, args.steps, args.rounds, scratch)
    print()
    print(table(rows))
    if args.write:
        command = "python bench/service.py " + " ".join(sys.argv[1:])
        info = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        replace_section(
            args.write,
            "service",
            f"Command: `{command.strip()}` ({info})\n\n{table(rows)}",
        )


if __name__ == "__main__":
    main()
