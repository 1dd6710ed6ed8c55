from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from app.api import create_app
from app.db import make_engine, upgrade
from app.settings import Settings
from tests.services import POSTGRES_URL, require_server


def _fresh_postgres(template: str | None = None) -> Iterator[str]:
    """A new database (a copy of `template` when given), dropped when the generator ends."""
    # pre-ping: a test may restart the server while the database is in use.
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"ganforge_test_{uuid.uuid4().hex[:12]}"
    copy = f' TEMPLATE "{template}"' if template else ""
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"{copy}'))
    except Exception as exc:  # noqa: BLE001 - any connection failure means no server
        admin.dispose()
        require_server("PostgreSQL", exc)
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped afterwards."""
    yield from _fresh_postgres()


@pytest.fixture(scope="session")
def _migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head, copied for each test (migrating takes 0.35 s)."""
    path = tmp_path_factory.mktemp("migrated") / "head.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def _migrated_postgres() -> Iterator[str]:
    """One PostgreSQL database migrated to head, the template of each test's database."""
    for url in _fresh_postgres():
        upgrade(url)  # alembic's engine is disposed: no session is left on the template
        yield make_url(url).database or ""


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path) -> Iterator[str]:
    """A migrated database of each test's own: SQLite file and real PostgreSQL, copies of
    one database the migrations built (tests/app/test_migrations.py runs them anew)."""
    if request.param == "sqlite":
        path = tmp_path / "api.db"
        with sqlite3.connect(request.getfixturevalue("_migrated_sqlite")) as source:
            with sqlite3.connect(path) as target:
                source.backup(target)
        yield f"sqlite:///{path}"
    else:
        yield from _fresh_postgres(template=request.getfixturevalue("_migrated_postgres"))


@pytest.fixture
def client(database_url: str, tmp_path) -> Iterator[TestClient]:
    engine = make_engine(database_url)
    settings = Settings(
        database_url=database_url,
        broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}",
        artifact_dir=tmp_path / "artifacts",
    )
    with TestClient(create_app(settings, engine), base_url="http://localhost") as test_client:
        yield test_client
    engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's migrated database (`database_url`)."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()
