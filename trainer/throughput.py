"""The training loop's throughput clock (`perf/steps_per_s`, `perf/samples_per_s`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class ThroughputClock:
    """Training steps per second between recorded steps. The time the loop spends inside
    `paused()` (evaluation, metrics, samples, checkpoints) is left out, so the rate is the
    training's own, whatever the `every.*` settings."""

    def __init__(self, step: int) -> None:
        self._since = time.perf_counter()
        self._since_step = step
        self._paused = 0.0

    def steps_per_s(self, step: int) -> float:
        """The rate from the previous call (or the start) to `step`; the clock starts over."""
        now = time.perf_counter()
        rate = (step - self._since_step) / max(now - self._since - self._paused, 1e-9)
        self._since, self._since_step, self._paused = now, step, 0.0
        return rate

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - started
