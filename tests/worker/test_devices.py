"""A worker's GPUs: the `--gpus` option, and claiming a job only with devices no other job
holds (app.devices under worker.runner.run_job), on a real SQLite database."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from sqlalchemy import Engine, insert, select

from app import devices
from app.db import make_engine, upgrade
from app.models import DeviceLease, Job, utcnow
from app.store import FileStore
from trainer.spec import TrainSpec
from worker.claim import BUSY
from worker.node import DeviceOptionError, Node, parse_devices, simulated
from worker.runner import run_job

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def engine(tmp_path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'worker.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _queued(engine: Engine, job_id: str, **spec) -> None:
    valid = TrainSpec.model_validate({"steps": 10, **spec})
    full = valid.model_dump(mode="json")
    with engine.begin() as conn:
        conn.execute(
            insert(Job).values(id=job_id, steps=10, spec=full, status="queued", gpus=valid.gpus)
        )


def _node(*names: str, wait: float = 0.0) -> Node:
    return Node(id="box:1:test", host="box", devices=names, simulate=True, wait_seconds=wait)


def test_the_gpus_option():
    assert parse_devices("0,1", simulate=True) == ("0", "1")
    assert parse_devices(" 2 , GPU-8f3c ", simulate=True) == ("2", "GPU-8f3c")
    assert parse_devices("none", simulate=True) == ()
    assert parse_devices(None, simulate=True) == ()  # simulated devices are only the listed
    for bad, reason in (("0,0", "twice"), ("0,,1", "not a device"), ("a b", "not a device")):
        with pytest.raises(DeviceOptionError, match=f"^--gpus: .*{reason}"):
            parse_devices(bad, simulate=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_gpus_without_cuda_need_simulation():
    with pytest.raises(DeviceOptionError, match="no CUDA device.*GANFORGE_SIMULATE_GPUS=1"):
        parse_devices("0", simulate=False)
    assert parse_devices(None, simulate=False) == ()  # no GPU here: a CPU worker
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "worker", "--gpus", "0,1"],
        cwd=ROOT,
        env={**os.environ, "GANFORGE_SIMULATE_GPUS": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: --gpus: 0,1 asked for, but this machine has no CUDA")


def test_a_job_whose_gpus_stay_held_is_left_queued_for_later(engine, tmp_path):
    _queued(engine, "holder", device="cuda")
    _queued(engine, "waiter", device="cuda", distributed={"world_size": 2})
    now = utcnow()
    with engine.begin() as conn:
        taken = devices.take(
            conn,
            host="box",
            devices=["1"],
            count=1,
            job_id="holder",
            owner="other-worker",
            expires_at=now + timedelta(minutes=1),
            now=now,
        )
    assert taken == ["1"]
    started = time.monotonic()
    status = run_job(
        "waiter", engine=engine, store=FileStore(tmp_path), node=_node("0", "1", wait=0.6)
    )
    assert status == BUSY and 0.5 < time.monotonic() - started < 5
    with engine.connect() as conn:
        waiter = conn.execute(
            select(Job.status, Job.attempt, Job.devices).where(Job.id == "waiter")
        ).one()
        leases = conn.execute(select(DeviceLease.device, DeviceLease.job_id)).all()
    assert tuple(waiter) == ("queued", 0, None)  # untouched: device 0 was not kept either
    assert [tuple(row) for row in leases] == [("1", "holder")]


def test_a_job_needing_more_gpus_than_the_worker_has_fails_saying_so(engine, tmp_path):
    _queued(engine, "big", resources={"gpus": 3})
    status = run_job("big", engine=engine, store=FileStore(tmp_path), node=_node("0", "1"))
    assert status == "failed"
    with engine.connect() as conn:
        error = conn.scalar(select(Job.error))
    assert error == (
        "resources.gpus: the job needs 3 GPU(s); worker box:1:test serves 2 (--gpus 0,1)"
    )


def test_simulated_gpus_train_on_the_cpu():
    spec = TrainSpec(device="cuda:1", distributed={"world_size": 2, "backend": "nccl"})
    cpu = simulated(spec)
    assert cpu.device == "cpu" and cpu.distributed.backend == "gloo" and cpu.gpus == 0
    assert simulated(TrainSpec(resources={"gpus": 2})).device == "cpu"


def test_up_takes_one_gpu_list_for_all_workers_or_one_per_worker():
    from typer.testing import CliRunner

    from app.cli import cli

    result = CliRunner().invoke(cli, ["up", "--workers", "3", "--gpus", "0", "--gpus", "1"])
    assert result.exit_code == 2
    assert "--workers 3 with 2 --gpus lists" in result.output


def test_a_refreshing_worker_never_looks_gone_to_a_reader(engine):
    """Presence writes the registration again every period (delete + insert): a reader of
    /api/health's report meanwhile sees the devices every time, never a moment without."""
    import threading

    from worker.node import Presence

    node = _node("0", "1", "2")
    stop = threading.Event()
    presence = Presence(engine, node, timedelta(seconds=0.2), stop)  # refreshes every 0.05 s
    presence.start()
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                now = utcnow()
                report = devices.report(conn, now=now, live_since=now - timedelta(seconds=60))
            seen.append(len(report["box"].devices) if "box" in report else 0)
    finally:
        stop.set()
        presence.join(timeout=5)
    first = seen.index(3)  # reads before the first registration see none, rightly
    gaps = [i for i, count in enumerate(seen) if i > first and count != 3]
    assert len(seen) - first > 50 and not gaps, (first, len(seen), gaps[:20])
    with engine.connect() as conn:
        assert devices.report(conn, now=utcnow(), live_since=utcnow()) == {}  # unregistered
