"""Migrations: `upgrade head` on empty SQLite and PostgreSQL; autogenerate finds no diff."""

from __future__ import annotations

import os
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from app.db import VERSION_TABLE, alembic_config, make_engine, our_tables_only, upgrade
from app.models import Base

TABLES = {
    "job",
    "metric_point",
    "sample",
    "checkpoint",
    "dataset",
    "ganforge_alembic_version",
    "sweep",
}


def _assert_schema_matches_models(url: str) -> None:
    engine = make_engine(url)
    try:
        assert TABLES <= set(inspect(engine).get_table_names())
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_name": our_tables_only,
                    "version_table": VERSION_TABLE,
                },
            )
            diff = compare_metadata(context, Base.metadata)
        assert diff == [], diff
    finally:
        engine.dispose()


def test_upgrade_head_on_empty_sqlite_matches_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'ganforge.db'}"
    upgrade(url)
    _assert_schema_matches_models(url)
    upgrade(url)  # a second upgrade is a no-op


def test_upgrade_head_on_empty_postgres_matches_the_models(postgres_url):
    upgrade(postgres_url)
    _assert_schema_matches_models(postgres_url)


def test_sqlite_runs_in_wal_mode_with_foreign_keys(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    engine.dispose()


def test_ganforge_db_upgrade_uses_the_configured_database(tmp_path, postgres_url):
    for url in (f"sqlite:///{tmp_path / 'cli.db'}", postgres_url):
        done = subprocess.run(
            [sys.executable, "-m", "app.cli", "db", "upgrade"],
            capture_output=True,
            text=True,
            env={**os.environ, "GANFORGE_DATABASE_URL": url},
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert "database at revision head" in done.stdout
        _assert_schema_matches_models(url)


def test_ganforge_db_upgrade_reports_an_unreachable_database(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "db", "upgrade"],
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "GANFORGE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none",
        },
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.startswith("error: database: ") and "Traceback" not in done.stderr


def test_a_database_migrated_before_0006_moves_its_revision_table(tmp_path, postgres_url):
    """Revisions 0001-0005 kept theirs in Alembic's default `alembic_version`; the next
    upgrade moves it to ours and goes on from 0005 (not from 0001 again)."""
    for url in (f"sqlite:///{tmp_path / 'old.db'}", postgres_url):
        upgrade(url, "0005")
        engine = make_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f"ALTER TABLE {VERSION_TABLE} RENAME TO alembic_version"))
        engine.dispose()
        upgrade(url)
        engine = make_engine(url)
        try:
            names = set(inspect(engine).get_table_names())
            assert "alembic_version" not in names and "sweep" in names
            with engine.connect() as conn:
                version = conn.scalar(text(f"SELECT version_num FROM {VERSION_TABLE}"))
            assert version == ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        finally:
            engine.dispose()
        _assert_schema_matches_models(url)


def test_optuna_storage_shares_the_database(tmp_path, postgres_url):
    """Optuna's RDB storage creates its tables (and its own `alembic_version`) beside ours;
    neither side's migrations see the other's tables, and both open again afterwards."""
    import optuna

    for url in (f"sqlite:///{tmp_path / 'shared.db'}", postgres_url):
        upgrade(url)
        storage = optuna.storages.RDBStorage(url)
        study = optuna.create_study(study_name=f"s-{tmp_path.name}", storage=storage)
        study.enqueue_trial({"x": 1.0})
        storage.remove_session()
        storage.engine.dispose()
        upgrade(url)  # a no-op with Optuna's tables there
        _assert_schema_matches_models(url)
        again = optuna.storages.RDBStorage(url)  # its schema check passes
        assert optuna.load_study(study_name=f"s-{tmp_path.name}", storage=again).trials
        again.engine.dispose()
