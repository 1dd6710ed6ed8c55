"""Reaching the machine's real servers: fail under CI, skip with a reason elsewhere."""

from __future__ import annotations

import os

import pytest

POSTGRES_URL = os.environ.get(
    "GANFORGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def require_server(name: str, error: Exception) -> None:
    """Under CI a missing server is a failure; on a developer machine, a skip."""
    message = f"{name} is not reachable: {error}"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def require_tool(path: str, install: str) -> str:
    """A program the tests run (Debian's promtool, prometheus): under CI a missing one is a
    failure; on a developer machine, a skip saying how to install it."""
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        message = f"{path} is not installed ({install}; `make test` installs it as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
