"""`ganforge submit SPEC [--server URL] [--watch]`: send a spec to the service over REST.

With --watch, follow the job's event stream with a progress bar and its latest losses until
it ends. Exit status: 0 submitted (or, watching, succeeded); 2 the spec is invalid (the
server's message names the field); 1 the job failed or was cancelled, or the server could
not be reached; 130 interrupted (the job keeps running on the server).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx2

from app.cli_options import ClientError, created
from app.models import JobStatus

SHOWN = ("loss/d", "loss/g", "audit/leak_d", "audit/leak_g", "eval/modes", "eval/hq")


def submit(
    client: httpx2.Client,
    raw_spec: dict[str, Any],
    *,
    name: str | None,
    tags: list[str],
    priority: int = 0,
) -> dict[str, Any]:
    body: dict[str, Any] = {"spec": raw_spec, "tags": tags, "priority": priority}
    if name:
        body["name"] = name
    return created(client.post("/api/jobs", json=body))


def events(client: httpx2.Client, job_id: str) -> Iterator[tuple[str, Any]]:
    """(event, data) pairs of the job's Server-Sent Events stream, until it ends."""
    with client.stream("GET", f"/api/jobs/{job_id}/events", timeout=None) as answer:
        if answer.status_code != 200:
            raise ClientError(f"server: {answer.status_code} on the event stream", 1)
        event, data = "message", list[str]()
        for line in answer.iter_lines():
            if line == "":
                if data:
                    yield event, json.loads("\n".join(data))
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())


def watch(client: httpx2.Client, job: dict[str, Any], echo: Any) -> int:
    """Follow a job to its end with a progress bar; the exit status of `ganforge submit`."""
    from tqdm import tqdm

    latest: dict[str, float | None] = {}
    final: dict[str, Any] = job
    with tqdm(total=job["steps"], unit="step", dynamic_ncols=True) as bar:
        for event, data in events(client, job["id"]):
            if event == "progress":
                bar.update(max(0, data["step"] - bar.n))
            elif event == "metrics":
                for name in SHOWN:
                    if name in data:
                        latest[name] = data[name]["value"][-1]
                bar.set_postfix_str(
                    " ".join(f"{k}={_fmt(v)}" for k, v in latest.items()), refresh=True
                )
            elif event == "job":
                final = data
                bar.set_description(data["status"])
            elif event == "end":
                break
    answer = client.get(f"/api/jobs/{job['id']}")
    if answer.status_code == 200:
        final = answer.json()
    status = final["status"]
    if status == JobStatus.SUCCEEDED:
        echo(f"job {job['id']} succeeded at step {final['step']}")
        return 0
    reason = f": {final['error']}" if final.get("error") else ""
    echo(f"job {job['id']} {status} at step {final['step']}{reason}")
    return 1


def _fmt(value: float | None) -> str:
    return "nan" if value is None else f"{value:.4g}"
