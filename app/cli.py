"""The `ganforge` command: the trainer's commands plus the service's (`db upgrade`, ...)."""

from __future__ import annotations

import typer

from trainer.cli import app

db = typer.Typer(no_args_is_help=True, help="The service database.")
app.add_typer(db, name="db")


@db.command()
def upgrade(
    revision: str = typer.Argument("head", help="migrate up to this revision"),
) -> None:
    """Run the Alembic migrations on GANFORGE_DATABASE_URL (SQLite under ./var by default)."""
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
        upgrade("head")
    uvicorn.run("app.api:create_app", factory=True, host=host, port=port)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
