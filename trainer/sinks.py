"""Where a run's outputs go. The training loop only calls these; it does no I/O itself.

Each sink is a `typing.Protocol`, with an in-memory implementation (tests, notebooks) and a
directory implementation (the `ganforge train --out DIR` layout of DESIGN.md section 6).
The service supplies database and artifact-store implementations of the same protocols.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from trainer.checkpoint import Checkpoint, CheckpointRecord, atomic_write, write_checkpoint


class MetricsSink(Protocol):
    def write(self, step: int, values: dict[str, float]) -> None: ...


class SampleSink(Protocol):
    def write(self, step: int, png: bytes) -> None: ...


class CheckpointSink(Protocol):
    def write(self, checkpoint: Checkpoint) -> CheckpointRecord: ...


class WarningSink(Protocol):
    def write(self, step: int, message: str) -> None: ...


@dataclass
class Sinks:
    metrics: MetricsSink
    samples: SampleSink
    checkpoints: CheckpointSink
    warnings: WarningSink


# ---- in memory --------------------------------------------------------------------------


@dataclass
class MemoryMetrics:
    rows: list[tuple[int, dict[str, float]]] = field(default_factory=list)

    def write(self, step: int, values: dict[str, float]) -> None:
        self.rows.append((step, dict(values)))

    def series(self, name: str) -> list[tuple[int, float]]:
        return [(step, row[name]) for step, row in self.rows if name in row]


@dataclass
class MemorySamples:
    images: dict[int, bytes] = field(default_factory=dict)

    def write(self, step: int, png: bytes) -> None:
        self.images[step] = png


@dataclass
class MemoryCheckpoints:
    saved: dict[int, Checkpoint] = field(default_factory=dict)

    def write(self, checkpoint: Checkpoint) -> CheckpointRecord:
        self.saved[checkpoint.step] = checkpoint
        return CheckpointRecord(checkpoint.step, checkpoint.sha256, len(checkpoint.data))


@dataclass
class MemoryWarnings:
    messages: list[tuple[int, str]] = field(default_factory=list)

    def write(self, step: int, message: str) -> None:
        self.messages.append((step, message))


def memory_sinks() -> Sinks:
    return Sinks(MemoryMetrics(), MemorySamples(), MemoryCheckpoints(), MemoryWarnings())


# ---- a directory ------------------------------------------------------------------------


def _finite_or_none(value: float) -> float | None:
    # JSON has no NaN/inf; a diverged value is written as null.
    return value if math.isfinite(value) else None


class JsonLines:
    """Appends one JSON object per line, flushed so a reader sees whole lines."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def append(self, row: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps(row, allow_nan=False) + "\n")


class DirectoryMetrics:
    def __init__(self, root: Path):
        self._lines = JsonLines(root / "metrics.jsonl")

    def write(self, step: int, values: dict[str, float]) -> None:
        row = {"step": step, **{k: _finite_or_none(v) for k, v in values.items()}}
        self._lines.append(row)


class DirectorySamples:
    def __init__(self, root: Path):
        self.folder = root / "samples"

    def write(self, step: int, png: bytes) -> None:
        atomic_write(self.folder / f"step_{step:06d}.png", png)


class DirectoryCheckpoints:
    def __init__(self, root: Path):
        self.folder = root / "checkpoints"

    def write(self, checkpoint: Checkpoint) -> CheckpointRecord:
        return write_checkpoint(self.folder, checkpoint)


class DirectoryWarnings:
    def __init__(self, root: Path):
        self._lines = JsonLines(root / "warnings.jsonl")

    def write(self, step: int, message: str) -> None:
        self._lines.append({"step": step, "message": message})


def directory_sinks(root: str | Path) -> Sinks:
    root = Path(root)
    return Sinks(
        DirectoryMetrics(root),
        DirectorySamples(root),
        DirectoryCheckpoints(root),
        DirectoryWarnings(root),
    )
