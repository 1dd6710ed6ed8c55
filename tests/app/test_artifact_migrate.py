"""`ganforge artifacts migrate --to URL`: every file copied, each SHA-256 checked, safe to run
again; damaged and missing source files reported (exit 1). From a folder store into the db
store and into S3 (moto's standalone server), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from app.cli import service
from app.db import make_engine
from app.models import Checkpoint, Dataset, Job, Sample
from app.settings import get_settings
from app.stores import open_store
from trainer.checkpoint import make_checkpoint


def _deployment(database_url: str, folder: Path) -> dict[str, bytes]:
    """A job with a sample and a checkpoint, and a dataset, in a folder store, with rows."""
    store = open_store(str(folder))
    ckpt = make_checkpoint(10, {"generator.w": torch.arange(1000.0)}, {"spec": {}})
    tensors, sidecar = store.write_checkpoint("jobs/j1/checkpoints", ckpt)
    store.write("jobs/j1/samples/step_000010.png", b"\x89PNG sample")
    store.write("datasets/d1.npy", b"npy bytes" * 100)
    engine = make_engine(database_url)
    with Session(engine) as session:
        session.add(Job(id="j1", steps=10, spec={}))
        session.flush()
        session.add(
            Checkpoint(job_id="j1", step=10, path=tensors, sha256=ckpt.sha256, size=len(ckpt.data))
        )
        session.add(Sample(job_id="j1", step=10, path="jobs/j1/samples/step_000010.png", size=11))
        data = store.read("datasets/d1.npy")
        session.add(
            Dataset(
                id="d1",
                filename="d.npy",
                shape=[900],
                dtype="uint8",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                path="datasets/d1.npy",
            )
        )
        session.commit()
    engine.dispose()
    return {relative: store.read(relative) for relative, _ in store.list()}


@pytest.mark.parametrize("target", ["db", "s3"])
def test_migrate_copies_checks_and_can_run_again(
    target: str, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request
) -> None:
    folder = tmp_path / "artifacts"
    files = _deployment(database_url, folder)
    monkeypatch.setenv("GANFORGE_DATABASE_URL", database_url)
    monkeypatch.setenv("GANFORGE_ARTIFACT_DIR", str(folder))
    monkeypatch.setenv("GANFORGE_CACHE_DIR", str(tmp_path / "cache"))
    url = "db"
    if target == "s3":
        server = request.getfixturevalue("s3_server")
        url = f"s3://{server.new_bucket()}/moved"
        monkeypatch.setenv("GANFORGE_S3_ENDPOINT_URL", server.endpoint_url)
    get_settings.cache_clear()
    runner = CliRunner()
    try:
        first = runner.invoke(service, ["artifacts", "migrate", "--to", url])
        assert first.exit_code == 0, first.output
        assert "copied 4 files" in first.output and f"GANFORGE_ARTIFACT_URL={url}" in first.output
        moved = open_store(
            url,
            database_url=database_url,
            cache=tmp_path / "cache",
            s3_endpoint_url=get_settings().s3_endpoint_url,
        )
        assert {r: moved.read(r) for r, _ in moved.list()} == files
        again = runner.invoke(service, ["artifacts", "migrate", "--to", url])
        assert again.exit_code == 0 and "copied 0 files" in again.output
        assert "4 already there" in again.output
        # A damaged checkpoint in the source is reported, not copied over the good one.
        tensors = folder / "jobs/j1/checkpoints/step_000010.safetensors"
        tensors.write_bytes(tensors.read_bytes()[:-4] + b"XXXX")
        (folder / "datasets/d1.npy").unlink()
        broken = runner.invoke(service, ["artifacts", "migrate", "--to", url])
        assert broken.exit_code == 1, broken.output
        assert "step_000010.safetensors: SHA-256" in broken.output and "damaged" in broken.output
        assert "datasets/d1.npy: listed in the database, missing from the source" in broken.output
        assert (
            moved.read("jobs/j1/checkpoints/step_000010.safetensors")
            == files["jobs/j1/checkpoints/step_000010.safetensors"]
        )
        moved.close()
        same = runner.invoke(service, ["artifacts", "migrate", "--to", str(folder)])
        assert same.exit_code == 2 and "is the source store itself" in same.output
    finally:
        get_settings.cache_clear()
