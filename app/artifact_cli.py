"""`ganforge artifacts ...`: the deployment's artifact store (the logic: app.artifact_migrate)."""

from __future__ import annotations

import time

import typer

from trainer.errors import first_line

artifacts = typer.Typer(no_args_is_help=True, help="The artifact store (samples, checkpoints).")


@artifacts.command("migrate")
def migrate_command(
    to: str = typer.Option(
        ..., "--to", metavar="URL", help="the target store: file:///path, s3://bucket/prefix or db"
    ),
    source_url: str | None = typer.Option(
        None, "--from", metavar="URL", help="the source store (default: the one in use)"
    ),
) -> None:
    """Copy every artifact into another store, checking each SHA-256; then point
    GANFORGE_ARTIFACT_URL at it. Safe to run again (files already there are kept)."""
    from sqlalchemy.exc import SQLAlchemyError
    from tqdm import tqdm

    from app.artifact_migrate import migrate
    from app.db import make_engine, upgrade
    from app.settings import get_settings
    from app.store import StoreError
    from app.stores import make_store, store_url

    settings = get_settings()
    try:
        upgrade(settings.database_url, "head")
        engine = make_engine(settings.database_url)
        source = make_store(settings, source_url or store_url(settings))
        target = make_store(settings, to)
    except (SQLAlchemyError, StoreError, ValueError) as exc:
        typer.echo(f"error: {first_line(exc)}", err=True)
        raise typer.Exit(2) from None
    if source.url == target.url:
        typer.echo(f"error: --to: {to} is the source store itself", err=True)
        raise typer.Exit(2)
    total = sum(size for _, size in source.list())
    started = time.monotonic()
    with tqdm(total=total, unit="B", unit_scale=True, desc="migrate", leave=False) as bar:
        try:
            report = migrate(engine, source, target, lambda _path, size: bar.update(size))
        except (SQLAlchemyError, StoreError, OSError) as exc:
            typer.echo(f"error: {first_line(exc)}", err=True)
            raise typer.Exit(1) from None
    seconds = max(time.monotonic() - started, 1e-9)
    typer.echo(
        f"copied {report.copied} files ({report.bytes / 1e6:.1f} MB, "
        f"{report.bytes / 1e6 / seconds:.1f} MB/s), {report.skipped} already there; "
        f"every copy read back and its SHA-256 checked: {source.url} -> {target.url}"
    )
    for problem in report.problems:
        typer.echo(f"problem: {problem}", err=True)
    if report.problems:
        raise typer.Exit(1)
    typer.echo(f"now set GANFORGE_ARTIFACT_URL={to} for the API and every worker, and restart them")
    source.close()
    target.close()
