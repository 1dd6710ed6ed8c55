"""The `ganforge` command: the trainer's commands plus the service's (`db upgrade`, ...)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from trainer.cli import app

db = typer.Typer(no_args_is_help=True, help="The service database.")
app.add_typer(db, name="db")


@db.command()
def upgrade(
    revision: str = typer.Argument("head", help="migrate up to this revision"),
) -> None:
    """Run the Alembic migrations on GANFORGE_DATABASE_URL (SQLite under ./var by default)."""
    upgrade_database(revision)


def upgrade_database(revision: str = "head") -> None:
    from alembic.util import CommandError
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import upgrade as run_upgrade
    from app.settings import get_settings

    url = get_settings().database_url
    try:
        run_upgrade(url, revision)
    except (SQLAlchemyError, CommandError) as exc:
        typer.echo(f"error: database: {str(exc).splitlines()[0]}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"database at revision {revision}: {_redacted(url)}")


@app.command()
def api(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    migrate: bool = typer.Option(True, help="run `db upgrade` first"),
) -> None:
    """Serve the REST API (OpenAPI docs at /docs) on GANFORGE_DATABASE_URL."""
    import uvicorn

    if migrate:
        upgrade_database("head")
    uvicorn.run("app.api:create_app", factory=True, host=host, port=port)


@app.command()
def worker(
    queues: str = typer.Option(
        "",
        help="comma-separated queues to consume (default: gpu,cpu with a GPU, else cpu; "
        "GANFORGE_QUEUE_PREFIX prefixes them)",
    ),
    threads: int = typer.Option(0, help="torch CPU threads (0: all cores)"),
    loglevel: str = typer.Option("info", help="Celery log level"),
) -> None:
    """A Celery worker process: runs one job at a time (start one per GPU)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from app.queue import worker_queues
    from app.settings import get_settings
    from worker.celery_app import celery

    if not queues:
        queues = ",".join(worker_queues(get_settings(), torch.cuda.is_available()))

    celery.worker_main(
        [
            "worker",
            "--pool=solo",
            f"--queues={queues}",
            f"--loglevel={loglevel}",
            f"--hostname=ganforge-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


@app.command()
def up(
    host: str = typer.Option("127.0.0.1", help="address the API listens on"),
    port: int = typer.Option(8000, help="port the API listens on"),
    workers: int = typer.Option(1, min=1, help="worker processes (one job each at a time)"),
    threads: int = typer.Option(0, help="torch threads per worker (0: cores / workers)"),
) -> None:
    """Run everything here: migrations, the API and worker processes, until Ctrl-C.

    Uses GANFORGE_DATABASE_URL and GANFORGE_BROKER_URL; by default SQLite and an embedded
    broker under ./var, so no server is needed.
    """
    from app.supervisor import run

    raise typer.Exit(
        run(host=host, port=port, workers=workers, threads=threads or None, echo=typer.echo)
    )


@app.command()
def submit(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="YAML or JSON job spec")],
    server: str = typer.Option(
        "http://127.0.0.1:8000", envvar="GANFORGE_SERVER", help="the ganforge API"
    ),
    watch: bool = typer.Option(False, help="follow the job with a progress bar until it ends"),
    name: str | None = typer.Option(None, help="job name (default: the spec's name)"),
    tag: Annotated[list[str] | None, typer.Option(help="a tag for the job (repeatable)")] = None,
) -> None:
    """Submit a job to a running service (`ganforge up` or `ganforge api`)."""
    import httpx2
    import yaml

    from app.submit import SubmitError
    from app.submit import submit as send
    from app.submit import watch as follow
    from trainer.spec import SpecError, load_spec

    try:
        load_spec(spec_path)  # the same one-line errors as `ganforge train`, before any request
        text = spec_path.read_text()
        raw = json.loads(text) if spec_path.suffix == ".json" else yaml.safe_load(text)
    except SpecError as exc:
        for line in exc.problems:
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    try:
        with httpx2.Client(base_url=server, timeout=30) as client:
            job = send(client, raw or {}, name=name, tags=tag or [])
            typer.echo(f"job {job['id']} queued: {server}/api/jobs/{job['id']}")
            for warning in job.get("warnings", []):
                typer.echo(f"warning: {warning}", err=True)
            if watch:
                raise typer.Exit(follow(client, job, typer.echo))
    except SubmitError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.code) from None
    except httpx2.HTTPError as exc:
        typer.echo(f"error: server: cannot reach {server}: {exc}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo("interrupted; the job goes on on the server", err=True)
        raise typer.Exit(130) from None


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
