"""The `ganforge` command: a root that adds the trainer's commands (train, generate) and the
service's (up, api, worker, submit, sweep, dataset, artifacts, db, token)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.artifact_cli import artifacts
from app.cli_options import DEFAULT_SERVER, Server, Token
from app.dataset_cli import dataset
from app.sweep_cli import sweep
from trainer.cli import cli as trainer_commands
from trainer.errors import first_line

if TYPE_CHECKING:
    from sqlalchemy import Engine

service = typer.Typer()
db = typer.Typer(no_args_is_help=True, help="The service database.")
service.add_typer(db, name="db")
token = typer.Typer(
    no_args_is_help=True,
    help="API tokens: once one exists, writes and artifact downloads need one.",
)
service.add_typer(token, name="token")
service.add_typer(dataset, name="dataset")
service.add_typer(artifacts, name="artifacts")
service.command()(sweep)

INSECURE_HELP = "listen on a non-loopback address even though no API token exists"


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
        typer.echo(f"error: database: {first_line(exc)}", err=True)
        raise typer.Exit(1) from None
    from app.logs import echo

    echo(f"database at revision {revision}: {_redacted(url)}")


@token.command("create")
def token_create(
    name: str = typer.Argument(..., help="who or what uses it (e.g. alice, ci); never reused"),
) -> None:
    """Make a token and print it once; only its SHA-256 is stored."""
    from app.tokens import TokenError, create_token

    engine = _migrated_engine()
    try:
        with engine.begin() as conn:
            secret = create_token(conn, name)
    except TokenError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(secret)
    typer.echo(
        f"token {name!r} created: this is the only time it is shown. Send it as "
        "`Authorization: Bearer <token>`, or set GANFORGE_TOKEN for `ganforge submit`.",
        err=True,
    )


@token.command("list")
def token_list() -> None:
    """Tokens by name, with when they were made, last used and revoked (never the secret)."""
    from sqlalchemy import select

    from app.models import ApiToken
    from app.settings import get_settings
    from app.tokens import parse_env_tokens

    engine = _migrated_engine()
    with engine.connect() as conn:
        rows = conn.execute(select(ApiToken).order_by(ApiToken.created_at)).all()
    env = parse_env_tokens(get_settings().api_tokens)
    if not rows and not env:
        typer.echo("no tokens: the API is open (writes and downloads need no token)")
        return
    typer.echo(f"{'NAME':24} {'CREATED':20} {'LAST USED':20} REVOKED")
    for name, _ in env:
        typer.echo(f"{name:24} (GANFORGE_API_TOKENS: set in the environment)")
    for row in rows:
        typer.echo(
            f"{row.name:24} {_stamp(row.created_at):20} {_stamp(row.last_used_at):20} "
            f"{_stamp(row.revoked_at)}"
        )


@token.command("revoke")
def token_revoke(name: str = typer.Argument(..., help="the token's name")) -> None:
    """Refuse a token from now on. The API stays protected even when none is left valid."""
    from app.tokens import revoke_token

    engine = _migrated_engine()
    with engine.begin() as conn:
        revoked = revoke_token(conn, name)
    if not revoked:
        typer.echo(f"error: name: no valid token named {name!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"token {name!r} revoked")


def _migrated_engine() -> Engine:
    from sqlalchemy.exc import SQLAlchemyError

    from app.db import make_engine
    from app.db import upgrade as run_upgrade
    from app.settings import get_settings

    url = get_settings().database_url
    try:
        run_upgrade(url, "head")
    except SQLAlchemyError as exc:
        typer.echo(f"error: database: {first_line(exc)}", err=True)
        raise typer.Exit(1) from None
    return make_engine(url)


def _stamp(value: object) -> str:
    from datetime import datetime

    return value.strftime("%Y-%m-%d %H:%M:%S") if isinstance(value, datetime) else "-"


def refuse_exposure(host: str, insecure: bool) -> None:
    """Exit when the API would listen beyond this machine with no token to guard it, or
    would answer any `Host` (GANFORGE_ALLOWED_HOSTS=*) with no token."""
    from app.hostguard import SETTING, HostPolicy, is_loopback
    from app.settings import get_settings
    from app.tokens import parse_env_tokens, tokens_exist

    settings = get_settings()
    any_host = HostPolicy.parse(settings.allowed_hosts).any_host
    if not any_host and (insecure or is_loopback(host)):
        return
    with _migrated_engine().connect() as conn:
        if tokens_exist(conn, parse_env_tokens(settings.api_tokens)):
            return
    if any_host:
        typer.echo(
            f"error: {SETTING}=*: any web page could reach the API by a name of its own, and "
            "no API token exists. Make one first (`ganforge token create NAME`), or list the "
            "names the server is reached by.",
            err=True,
        )
        raise typer.Exit(2)
    typer.echo(
        f"error: --host {host}: anyone who can reach this address could submit jobs and "
        "download artifacts, and no API token exists. Make one first (`ganforge token "
        "create NAME`), or pass --insecure to serve it open.",
        err=True,
    )
    raise typer.Exit(2)


def serve_own_names(host: str) -> None:
    """Add the names a non-loopback `--host` is reached by to GANFORGE_ALLOWED_HOSTS, for the
    API this process (or its children) serves; loopback names are always served."""
    from app.hostguard import SETTING, HostPolicy, is_loopback, merged_setting, own_names
    from app.settings import get_settings

    if is_loopback(host):
        return
    os.environ[SETTING] = merged_setting(os.environ.get(SETTING, ""), own_names(host))
    get_settings.cache_clear()
    served = HostPolicy.parse(os.environ[SETTING]).describe()
    typer.echo(f"serving Host names: {served} (more: {SETTING})", err=True)


@service.command()
def api(
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    port: int = typer.Option(8000, help="port to listen on"),
    migrate: bool = typer.Option(True, help="run `db upgrade` first"),
    insecure: bool = typer.Option(False, envvar="GANFORGE_INSECURE", help=INSECURE_HELP),
) -> None:
    """Serve the REST API (OpenAPI docs at /docs) on GANFORGE_DATABASE_URL."""
    import uvicorn

    from app.logs import setup_logging, uvicorn_log_config

    setup_logging()
    if migrate:
        upgrade_database("head")
    refuse_exposure(host, insecure)
    serve_own_names(host)
    uvicorn.run(
        "app.api:create_app", factory=True, host=host, port=port, log_config=uvicorn_log_config()
    )


GPUS_HELP = (
    "GPUs this worker gives its jobs, comma-separated as nvidia-smi numbers them (0,1) or by "
    "UUID; `none` for none (default: every CUDA device it sees). Workers may share devices: "
    "no two jobs ever hold one"
)


@service.command()
def worker(
    queues: str = typer.Option(
        "",
        help="comma-separated queues to consume (default: gpuN..gpu2,gpu,cpu for N GPUs, "
        "else cpu; GANFORGE_QUEUE_PREFIX prefixes them)",
    ),
    gpus: str | None = typer.Option(None, help=GPUS_HELP),
    threads: int = typer.Option(0, help="torch CPU threads (0: all cores)"),
    loglevel: str = typer.Option("info", help="Celery log level"),
) -> None:
    """A Celery worker process: runs one job at a time on its GPUs (or the CPU)."""
    from app.logs import echo, setup_logging

    setup_logging()  # until Celery sets up its logging (worker.celery_app takes it over)
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    from app.queue import worker_queues
    from app.settings import get_settings
    from worker.node import DeviceOptionError, Node, parse_devices

    settings = get_settings()
    try:
        devices = parse_devices(gpus, simulate=settings.simulate_gpus)
    except DeviceOptionError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not devices:
        # Jobs train in this process: an `auto` one must not find a GPU it does not hold.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    node = Node.here(settings, devices)
    from worker.celery_app import celery, configure

    configure(node)
    if not queues:
        queues = ",".join(worker_queues(settings, len(devices)))
    simulated = " (simulated)" if devices and settings.simulate_gpus else ""
    echo(
        f"worker {node.id}: GPUs {','.join(devices) or 'none'}{simulated}; queues {queues}",
        err=True,
    )
    celery.worker_main(
        [
            "worker",
            # A pool of one thread: the job runs beside the consumer, which goes on answering
            # remote control (`celery inspect active`, Flower) and sending heartbeats.
            "--pool=threads",
            "--concurrency=1",
            f"--queues={queues}",
            f"--loglevel={loglevel}",
            f"--hostname=ganforge-{os.getpid()}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@service.command()
def up(
    host: str = typer.Option("127.0.0.1", help="address the API listens on"),
    port: int = typer.Option(8000, help="port the API listens on"),
    workers: int = typer.Option(1, min=1, help="worker processes (one job each at a time)"),
    threads: int = typer.Option(0, help="torch threads per worker (0: cores / workers)"),
    gpus: Annotated[
        list[str] | None,
        typer.Option(
            help="a worker's GPUs, as `ganforge worker --gpus`: once for every worker, or once "
            "per worker (`--gpus 0,1 --gpus 2` starts two)"
        ),
    ] = None,
    insecure: bool = typer.Option(False, envvar="GANFORGE_INSECURE", help=INSECURE_HELP),
) -> None:
    """Run everything here: migrations, the API and worker processes, until Ctrl-C.

    Uses GANFORGE_DATABASE_URL and GANFORGE_BROKER_URL; by default SQLite and an embedded
    broker under ./var, so no server is needed.
    """
    from app.logs import setup_logging
    from app.supervisor import run

    setup_logging()
    lists = gpus or []
    if len(lists) > 1:
        if workers not in (1, len(lists)):
            typer.echo(
                f"error: --workers {workers} with {len(lists)} --gpus lists: give one list "
                "for all workers, or one per worker",
                err=True,
            )
            raise typer.Exit(2)
        workers = len(lists)
    upgrade_database("head")
    refuse_exposure(host, insecure)
    raise typer.Exit(
        run(
            host=host,
            port=port,
            workers=workers,
            threads=threads or None,
            echo=typer.echo,
            gpus=[lists[i % len(lists)] for i in range(workers)] if lists else None,
        )
    )


@service.command()
def submit(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC", help="YAML or JSON job spec")],
    server: Server = DEFAULT_SERVER,
    watch: bool = typer.Option(False, help="follow the job with a progress bar until it ends"),
    name: str | None = typer.Option(None, help="job name (default: the spec's name)"),
    tag: Annotated[list[str] | None, typer.Option(help="a tag for the job (repeatable)")] = None,
    priority: int = typer.Option(
        0, min=-100, max=100, help="free workers take the highest priority first"
    ),
    api_token: Token = None,
) -> None:
    """Submit a job to a running service (`ganforge up` or `ganforge api`)."""
    import yaml

    from app.cli_options import client, exits_on_failure
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
    with exits_on_failure(server, "the job"), client(server, api_token) as api:
        job = send(api, raw or {}, name=name, tags=tag or [], priority=priority)
        typer.echo(f"job {job['id']} queued: {server}/api/jobs/{job['id']}")
        for warning in job.get("warnings", []):
            typer.echo(f"warning: {warning}", err=True)
        if watch:
            raise typer.Exit(follow(api, job, typer.echo))


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


cli = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help=trainer_commands.info.help,
)
cli.add_typer(trainer_commands)
cli.add_typer(service)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
