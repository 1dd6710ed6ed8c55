"""The embedded broker (kombu's SQLAlchemy transport) as the API uses it."""

from __future__ import annotations

import gc

from app import queue
from app.settings import Settings


def test_broker_round_trips_give_their_database_connection_back(tmp_path):
    """/api/health pings the broker and /metrics counts its queues on every request; kombu's
    channel kept its connection until the garbage collector freed it, so a dashboard polling
    both exhausted the pool (15 connections) within seconds."""
    settings = Settings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}")
    gc.disable()
    try:
        for _ in range(40):
            queue.ping(settings)
            assert queue.queue_depth(settings, ["gpu2"])["gpu2"] == 0
    finally:
        gc.enable()
