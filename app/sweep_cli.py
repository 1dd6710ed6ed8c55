"""`ganforge sweep SWEEP.yaml [--watch]`: submit a sweep (the body of POST /api/sweeps, as
YAML or JSON) and, with --watch, show a live table of its trials until it ends.

Exit status: 0 submitted (or, watching, finished); 2 the file or the sweep is invalid (the
server's message names the field); 1 the sweep was cancelled or the server could not be
reached; 130 interrupted (the sweep goes on on the server).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli_options import (
    DEFAULT_SERVER,
    ClientError,
    Server,
    Token,
    client,
    created,
    exits_on_failure,
)

Echo = Callable[[str], Any]
COLUMNS = ("#", "status", "step", "value", "params")


def read_body(path: Path) -> dict[str, Any]:
    """The sweep file as a request body; ClientError (exit 2) when it is not a mapping."""
    import yaml

    try:
        text = path.read_text()
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except OSError as exc:
        raise ClientError(f"sweep: cannot read {path}: {exc.strerror}", 2) from None
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        raise ClientError(f"sweep: {path} is not valid YAML/JSON: {first}", 2) from None
    if not isinstance(raw, dict):
        raise ClientError(f"sweep: {path} must hold a mapping (name, base, space, ...)", 2)
    return raw


def submit(api: Any, body: dict[str, Any]) -> dict[str, Any]:
    return created(api.post("/api/sweeps", json=body))


def table(sweep: dict[str, Any]) -> str:
    """The sweep's trials as a text table, with a header line and the best trial."""
    rows = [COLUMNS]
    for trial in sweep["trials"]:
        value = "" if trial["value"] is None else f"{trial['value']:.4g}"
        params = " ".join(f"{k}={_short(v)}" for k, v in trial["params"].items())
        step = f"{trial['step']}/{trial['steps']}"
        if trial["pruned_at"] is not None:
            step += f" (pruned at {trial['pruned_at']})"
        rows.append((str(trial["number"]), trial["status"], step, value, params))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ]
    counts = ", ".join(f"{n} {status}" for status, n in sorted(sweep["counts"].items()))
    objective = sweep["objective"]
    head = (
        f"sweep {sweep['id']} {sweep['status']}: {len(sweep['trials'])}/"
        f"{sweep['budget']['trials']} trials ({counts or 'none yet'}); "
        f"{objective['mode']} {objective['metric']}"
    )
    best = sweep.get("best")
    tail = [f"best: #{_number(sweep, best['job_id'])} {best['value']:.4g}"] if best else []
    skipped = (
        [f"skipped {len(sweep['skipped'])} invalid combination(s)"] if sweep["skipped"] else []
    )
    return "\n".join([head, *lines, *tail, *skipped])


def _number(sweep: dict[str, Any], job_id: str) -> int | None:
    return next((t["number"] for t in sweep["trials"] if t["job_id"] == job_id), None)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def watch(client: Any, sweep_id: str, echo: Echo, *, every: float = 1.0) -> int:
    """Redraw the trials table until the sweep ends; 0 finished, 1 cancelled."""
    live = sys.stdout.isatty()
    shown = ""
    while True:
        answer = client.get(f"/api/sweeps/{sweep_id}")
        if answer.status_code != 200:
            raise ClientError(f"server: {answer.status_code} for sweep {sweep_id}", 1)
        sweep = answer.json()
        text = table(sweep)
        if text != shown:
            echo(("\x1b[H\x1b[J" if live else "") + text)  # redraw in place on a terminal
            shown = text
        if sweep["status"] != "running" and not any(
            t["status"] in ("queued", "running", "cancelling") for t in sweep["trials"]
        ):
            return 0 if sweep["status"] == "finished" else 1
        time.sleep(every)


def sweep(
    path: Annotated[Path, typer.Argument(metavar="SWEEP", help="YAML or JSON sweep")],
    server: Server = DEFAULT_SERVER,
    watch_it: bool = typer.Option(
        False, "--watch", help="show a live table of the trials until the sweep ends"
    ),
    api_token: Token = None,
) -> None:
    """Submit a sweep (a search over specs: README, Sweeps) to a running service."""
    with exits_on_failure(server, "the sweep"):
        body = read_body(path)
        with client(server, api_token) as api:
            made = submit(api, body)
            typer.echo(f"sweep {made['id']} running: {server}/api/sweeps/{made['id']}")
            if watch_it:
                raise typer.Exit(watch(api, made["id"], typer.echo))
