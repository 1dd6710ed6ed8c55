"""`ganforge up`: migrations, then the API and N worker processes, supervised.

A child that dies is restarted (at most 5 times a minute); Ctrl-C (or SIGTERM) stops them
all: workers checkpoint their job and put it back on the queue, then everything exits.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx2

from app.logs import Say, to_log

STOP_GRACE_SECONDS = 30.0
RESTARTS_PER_MINUTE = 5


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    restarts: deque[float] = field(default_factory=deque)

    def start(self) -> None:
        # Own session: a terminal's Ctrl-C reaches only the supervisor, which then stops the
        # children in order (a second SIGINT would make Celery abandon its job).
        self.process = subprocess.Popen(self.argv, start_new_session=True)

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]


def run(
    *,
    host: str,
    port: int,
    workers: int,
    threads: int | None,
    echo: Callable[[str], None],
    gpus: list[str] | None = None,
) -> int:
    """Supervise the API and `workers` workers (worker i with `--gpus gpus[i]` when given)
    until SIGINT or SIGTERM; the exit status. The caller has run the migrations and checked
    the exposure (`ganforge up`)."""
    say = to_log(echo, "ganforge.supervisor")  # GANFORGE_LOG_FORMAT=json: JSON lines
    children = _children(host=host, port=port, workers=workers, threads=threads, gpus=gpus)
    stop = _StopRequest()
    for child in children:
        child.start()
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    announced = False
    code = 0
    while not stop.requested:
        if not announced and _healthy(url):
            say(f"ganforge is up: dashboard {url}/  (API docs {url}/docs; Ctrl-C stops)", url=url)
            announced = True
        if not all(_restart_if_exited(child, say) for child in children if not stop.requested):
            code = 1
            break
        time.sleep(0.25)
    say("stopping: workers checkpoint their jobs and requeue them ...")
    _stop(children)
    return code


def _children(
    *, host: str, port: int, workers: int, threads: int | None, gpus: list[str] | None
) -> list[Child]:
    per_worker = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
    # `ganforge up` checked the exposure before calling run: the API child need not again.
    api = Child(
        "api", _cli("api", "--host", host, "--port", str(port), "--no-migrate", "--insecure")
    )
    return [api] + [
        Child(
            f"worker-{i + 1}",
            _cli("worker", "--threads", str(per_worker), *(("--gpus", gpus[i]) if gpus else ())),
        )
        for i in range(workers)
    ]


class _StopRequest:
    """Set by the first SIGINT or SIGTERM: the loop then stops the children in order."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, _signum: int, _frame: object) -> None:
        self.requested = True


def _restart_if_exited(child: Child, say: Say) -> bool:
    """Restart a child that exited; False when it keeps exiting (5 times in a minute)."""
    status = child.poll()
    if status is None:
        return True
    now = time.monotonic()
    while child.restarts and now - child.restarts[0] > 60:
        child.restarts.popleft()
    if len(child.restarts) >= RESTARTS_PER_MINUTE:
        say(f"error: {child.name} keeps exiting (status {status}); stopping", child=child.name)
        return False
    say(
        f"{child.name} exited with status {status}; restarting it",
        logging.WARNING,
        child=child.name,
        exit_status=status,
    )
    child.restarts.append(now)
    child.start()
    return True


def _healthy(url: str) -> bool:
    try:
        return httpx2.get(f"{url}/api/health", timeout=1.0).status_code == 200
    except httpx2.HTTPError:
        return False


def _stop(children: list[Child]) -> None:
    for child in children:
        if child.process is not None and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
