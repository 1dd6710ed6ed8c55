from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
import torch

if TYPE_CHECKING:
    from tests.s3server import S3Server

# The networks in tests are tiny: one intra-op thread is several times faster than two
# (and does not fight other processes on a 2-core machine).
torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _cache_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> None:
    # The digits classifier cache goes to a scratch folder, not the user's ~/.cache.
    os.environ.setdefault("GANFORGE_CACHE_DIR", str(tmp_path_factory.mktemp("ganforge-cache")))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Services the end-to-end tests started stop in the background; wait for the last ones.
    import sys

    services = sys.modules.get("tests.service.conftest")
    if services is not None:
        services.stop_services()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's standalone S3 server (tests/s3server.py), one per session; its fake AWS
    credentials in os.environ for the stores the tests open in this process."""
    from tests.s3server import start_s3_server

    server = start_s3_server()
    for name, value in server.env.items():
        os.environ.setdefault(name, value)
    try:
        yield server
    finally:
        server.stop()
