"""Schemathesis against the app's own OpenAPI schema: generated requests to every operation
(a bounded number each) never get a 5xx, and every response matches the schema. The app runs
on a migrated SQLite file with the embedded broker (the other tests cover PostgreSQL)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from app.api import create_app
from app.db import make_engine, upgrade
from app.settings import Settings

_FOLDER = tempfile.TemporaryDirectory(prefix="ganforge-schemathesis-")
_ROOT = Path(_FOLDER.name)
_URL = f"sqlite:///{_ROOT / 'api.db'}"
upgrade(_URL)
_APP = create_app(
    Settings(
        database_url=_URL,
        broker_url=f"sqla+sqlite:///{_ROOT / 'broker.db'}",
        artifact_dir=_ROOT / "artifacts",
        allowed_hosts="testserver",  # the name schemathesis's ASGI client sends
    ),
    make_engine(_URL),
)
schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@hypothesis_settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_responses_match_the_schema(case):
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
