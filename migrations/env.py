"""Alembic environment: migrates the database named by sqlalchemy.url (set by app.db)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, inspect, text

from app.db import VERSION_TABLE, make_engine, our_tables_only
from app.models import Base
from app.settings import get_settings

config = context.config
target_metadata = Base.metadata

LEGACY_VERSION_TABLE = "alembic_version"
OUR_REVISIONS = ("0001", "0002", "0003", "0004", "0005")


def _adopt_legacy_version_table(connection: Connection) -> None:
    """A database migrated before revision 0006 keeps our revision in `alembic_version`:
    move it to VERSION_TABLE (once; Optuna's revision in that table is left alone)."""
    tables = set(inspect(connection).get_table_names())
    if VERSION_TABLE in tables or LEGACY_VERSION_TABLE not in tables:
        return
    rows = connection.execute(text(f"SELECT version_num FROM {LEGACY_VERSION_TABLE}")).all()
    ours = [row[0] for row in rows if row[0] in OUR_REVISIONS]
    if not ours:
        return
    connection.execute(
        text(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    )
    connection.execute(text(f"INSERT INTO {VERSION_TABLE} VALUES (:v)"), {"v": ours[0]})
    if len(ours) == len(rows):
        connection.execute(text(f"DROP TABLE {LEGACY_VERSION_TABLE}"))
    else:
        connection.execute(
            text(f"DELETE FROM {LEGACY_VERSION_TABLE} WHERE version_num = :v"), {"v": ours[0]}
        )


def database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().database_url


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        version_table=VERSION_TABLE,
        include_name=our_tables_only,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(database_url())
    with engine.connect() as connection:
        with connection.begin():
            _adopt_legacy_version_table(connection)
        # Batch mode lets ALTER-style migrations run on SQLite too.
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            compare_type=True,
            version_table=VERSION_TABLE,
            include_name=our_tables_only,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
