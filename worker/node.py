"""This worker process and its GPUs: which devices it serves (`ganforge worker --gpus`), and
keeping that registered in the database while it runs (app.devices)."""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from app import devices
from app.models import utcnow
from app.settings import Settings
from trainer.errors import first_line
from trainer.spec import TrainSpec

log = logging.getLogger("ganforge.worker")

_DEVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$")


class DeviceOptionError(ValueError):
    """A `--gpus` list this machine cannot serve; the message names the option."""


@dataclass(frozen=True)
class Node:
    """A worker process as the device allocator sees it."""

    id: str  # host:pid:random, recorded on each job it runs (`Job.worker`)
    host: str
    devices: tuple[str, ...] = ()
    simulate: bool = False
    wait_seconds: float = 5.0

    @classmethod
    def here(cls, settings: Settings, devices: tuple[str, ...]) -> Node:
        host = settings.host_name or socket.gethostname()
        return cls(
            id=f"{host}:{os.getpid()}:{uuid.uuid4().hex[:8]}",
            host=host,
            devices=devices,
            simulate=settings.simulate_gpus,
            wait_seconds=settings.device_wait_seconds,
        )


def parse_devices(option: str | None, *, simulate: bool) -> tuple[str, ...]:
    """The devices of `--gpus`: `0,1` (CUDA's numbers, or GPU UUIDs), `none`, or left out for
    every CUDA device this process sees (none when simulating)."""
    if option is None:
        return () if simulate else _visible_devices()
    if option.strip().lower() in ("", "none"):
        return ()
    names = [part.strip() for part in option.split(",")]
    for name in names:
        if not _DEVICE_NAME.match(name):
            raise DeviceOptionError(f"--gpus: {name!r} is not a device number or name")
    if len(set(names)) != len(names):
        raise DeviceOptionError(f"--gpus: {option!r} names a device twice")
    if not simulate and not _visible_devices():
        raise DeviceOptionError(
            f"--gpus: {option} asked for, but this machine has no CUDA device "
            "(GANFORGE_SIMULATE_GPUS=1 simulates them: jobs train on the CPU)"
        )
    return tuple(names)


def _visible_devices() -> tuple[str, ...]:
    import torch

    # NVML where available: counting does not start CUDA in this process.
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return tuple(d.strip() for d in listed.split(",") if d.strip())[:count]
    return tuple(str(i) for i in range(count))


class Presence(threading.Thread):
    """Registers the node's devices now and again every few seconds until `stop` is set,
    then unregisters them. A registration older than the lease counts as gone (a killed
    worker), so the refresh comes well within it."""

    def __init__(self, engine: Engine, node: Node, lease: timedelta, stop: threading.Event):
        super().__init__(name="device-presence", daemon=True)
        self.engine, self.node, self.lease, self.stop = engine, node, lease, stop
        self.period = min(5.0, lease.total_seconds() / 4)

    def register(self) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            devices.register(
                conn, worker=self.node.id, host=self.node.host, devices=self.node.devices, now=now
            )
            devices.forget_stale(conn, now - 10 * self.lease)

    def run(self) -> None:
        while True:
            try:
                self.register()
            except Exception as exc:  # noqa: BLE001 - the next refresh tries again
                log.warning("registering devices failed: %s", first_line(exc))
            if self.stop.wait(self.period):
                break
        try:
            with self.engine.begin() as conn:
                devices.unregister(conn, self.node.id)
        except Exception as exc:  # noqa: BLE001 - it expires on its own
            log.warning("unregistering devices failed: %s", first_line(exc))


def simulated(spec: TrainSpec) -> TrainSpec:
    """The spec as a worker with simulated GPUs trains it: on the CPU (gloo between ranks)."""
    raw = spec.model_dump(mode="json")
    raw["device"] = "cpu"
    raw["resources"]["gpus"] = None
    if raw["distributed"]["backend"] == "nccl":
        raw["distributed"]["backend"] = "gloo"
    return TrainSpec.model_validate(raw)
