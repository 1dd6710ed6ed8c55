"""Sweep throughput benchmark (not a test): trials per hour a sweep sustains on this machine
with 2 workers, against the same specs submitted as plain jobs (the controller's overhead).

    python bench/sweeps.py [--backend embedded|redis|both] [--trials 8] [--steps 300]
                           [--rounds 2] [--write docs/benchmarks.md]

One `ganforge up --workers 2 --threads 1` per backend (`embedded`: SQLite + the SQLite
broker; `redis`: a fresh PostgreSQL database + Redis, as tests/service runs them), warmed
up with one tiny job. Each round, in turn:

- sweep: a grid sweep over `optim.g.lr` (`--trials` values, the ring, `--steps` steps,
  evaluated every steps/3) with budget {trials, concurrent: 2}, from the POST until the
  client sees it finished. Its trials are created by the controllers: the API's first pass,
  then a worker's pass right after each trial it ran ends (or the reconciler's, every
  GANFORGE_RECONCILE_EVERY_SECONDS, default 10 s, as configured).
- jobs: the very specs its trials ran, each POSTed to /api/jobs, all at once, from the
  first POST until the client sees the last finished: the two workers never wait for a
  controller, the best a sweep could do.

trials/hour = trials / wall time x 3600. The gap is the mean time from a trial's end to
its worker starting the next (the controller's part of the wall time). The 1-, 5- and
15-minute load averages are recorded: other work on the machine shows in them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import replace_section  # noqa: E402
from tests.service.conftest import running_service, tiny_spec  # noqa: E402

ENDED = ("succeeded", "failed", "cancelled", "pruned")


def load() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def sweep_body(trials: int, steps: int) -> dict[str, Any]:
    every = {"metrics": 10, "samples": 0, "checkpoint": 0, "eval": max(1, steps // 3)}
    return {
        "name": "bench",
        "base": tiny_spec(steps=steps, every=every),
        "space": {"optim.g.lr": {"values": [round(1e-3 * (i + 1), 6) for i in range(trials)]}},
        "method": "grid",
        "objective": {"metric": "eval/hq", "mode": "max"},
        "budget": {"trials": trials, "concurrent": 2},
        "seed": 0,
    }


def run_sweep(client: httpx2.Client, body: dict[str, Any]) -> tuple[float, list[dict[str, Any]]]:
    """Wall time of a sweep from its POST until it is finished; its trial jobs."""
    started = time.monotonic()
    made = client.post("/api/sweeps", json=body)
    assert made.status_code == 201, made.text
    sweep_id = made.json()["id"]
    while True:
        sweep = client.get(f"/api/sweeps/{sweep_id}").json()
        if sweep["status"] != "running":
            break
        time.sleep(0.05)
    wall = time.monotonic() - started
    assert sweep["counts"] == {"succeeded": body["budget"]["trials"]}, sweep
    jobs = [client.get(f"/api/jobs/{t['job_id']}").json() for t in sweep["trials"]]
    return wall, jobs


def run_jobs(client: httpx2.Client, specs: list[dict[str, Any]]) -> tuple[float, list[dict]]:
    """Wall time of the same specs as plain jobs, all submitted at once, until all ended."""
    started = time.monotonic()
    ids = [client.post("/api/jobs", json={"spec": spec}).json()["id"] for spec in specs]
    pending = set(ids)
    while pending:
        for job_id in list(pending):
            if client.get(f"/api/jobs/{job_id}").json()["status"] in ENDED:
                pending.discard(job_id)
        time.sleep(0.05)
    wall = time.monotonic() - started
    jobs = [client.get(f"/api/jobs/{job_id}").json() for job_id in ids]
    assert all(j["status"] == "succeeded" for j in jobs), jobs
    return wall, jobs


def gap(jobs: list[dict[str, Any]]) -> float:
    """Mean seconds a worker waited between jobs: each job's start after the previous end
    of the same worker."""
    by_worker: dict[str, list[tuple[datetime, datetime]]] = {}
    for job in jobs:
        start = datetime.fromisoformat(job["started_at"])
        end = datetime.fromisoformat(job["finished_at"])
        by_worker.setdefault(job["worker"], []).append((start, end))
    waits = []
    for runs in by_worker.values():
        runs.sort()
        waits += [(b[0] - a[1]).total_seconds() for a, b in zip(runs, runs[1:], strict=False)]
    return statistics.mean(waits) if waits else 0.0


def bench_backend(backend: str, args: argparse.Namespace, scratch: Path) -> list[list[str]]:
    rows: list[list[str]] = []
    name = "embedded" if backend == "embedded" else "postgres+redis"
    workdir = scratch / backend
    workdir.mkdir()
    with running_service(workdir, name, workers=2) as service, service.client() as client:
        warm = client.post("/api/jobs", json={"spec": tiny_spec(steps=10)}).json()
        service.wait_for(warm["id"], ENDED)
        for round_ in range(1, args.rounds + 1):
            wall, trial_jobs = run_sweep(client, sweep_body(args.trials, args.steps))
            rows.append(_row(backend, round_, "sweep", wall, trial_jobs, args.trials))
            print(" | ".join(rows[-1]), flush=True)
            wall, plain = run_jobs(client, [j["spec"] for j in trial_jobs])
            rows.append(_row(backend, round_, "jobs", wall, plain, args.trials))
            print(" | ".join(rows[-1]), flush=True)
    return rows


def _row(backend: str, round_: int, what: str, wall: float, jobs: list[dict], n: int) -> list[str]:
    return [
        backend,
        str(round_),
        what,
        str(n),
        f"{wall:.1f}",
        f"{n / wall * 3600:.0f}",
        f"{gap(jobs):.2f}",
        load(),
    ]


HEADER = ["backend", "round", "submitted as", "trials", "wall s", "trials/hour", "gap s", "load"]


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def summary(rows: list[list[str]]) -> str:
    """Per backend: the best round of each way, and the sweep's share of the jobs' rate."""
    out = []
    for backend in dict.fromkeys(r[0] for r in rows):
        best = {
            what: max(float(r[5]) for r in rows if r[0] == backend and r[2] == what)
            for what in ("sweep", "jobs")
        }
        ratio = best["sweep"] / best["jobs"]
        out.append(
            f"- {backend}: a sweep sustains {best['sweep']:.0f} trials/hour, the same specs as "
            f"plain jobs {best['jobs']:.0f}/hour: {ratio:.2f}x (best round of each)."
        )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["embedded", "redis", "both"], default="both")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path, help="markdown file to update")
    args = parser.parse_args()
    backends = ["embedded", "redis"] if args.backend == "both" else [args.backend]
    print(f"cores {os.cpu_count()}, load {load()}", flush=True)
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory(prefix="ganforge-bench-sweeps-") as tmp:
        for backend in backends:
            rows += bench_backend(backend, args, Path(tmp))
    print()
    print(table(rows))
    print(summary(rows))
    if args.write:
        command = "python bench/sweeps.py " + " ".join(sys.argv[1:])
        info = f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}"
        replace_section(
            args.write,
            "sweeps",
            f"Command: `{command.strip()}` ({info}). Two workers; a grid sweep with budget "
            "{trials, concurrent: 2} against its trials' specs POSTed as plain jobs all at "
            "once. Gap: mean seconds a worker waited between two jobs.\n\n"
            f"{table(rows)}\n{summary(rows)}",
        )


if __name__ == "__main__":
    main()
