"""The artifact-store contract (app/store.py), the same on every store: a folder, S3 (a real
S3-API server: moto's standalone server, tests/s3server.py) and the database (SQLite and
PostgreSQL)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.store import ArtifactMissing, ArtifactStore, StoreError, check_url
from app.stores import open_store
from trainer.checkpoint import CheckpointError, make_checkpoint

KINDS = ["file", "s3", "db-sqlite", "db-postgresql"]


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    cache = tmp_path / "cache"
    kind = request.param
    if kind == "file":
        yield open_store(str(tmp_path / "artifacts"), cache=cache)
    elif kind == "s3":
        server = request.getfixturevalue("s3_server")
        bucket = server.new_bucket()
        yield open_store(f"s3://{bucket}/deploy", cache=cache, s3_endpoint_url=server.endpoint_url)
    else:
        database = "sqlite" if kind == "db-sqlite" else "postgresql"
        url = _database(request, database, tmp_path)
        store = open_store("db", database_url=url, cache=cache)
        yield store
        store.close()  # the db store's engine


def _database(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    import sqlite3

    if kind == "sqlite":
        path = tmp_path / "store.db"
        with sqlite3.connect(request.getfixturevalue("_migrated_sqlite")) as source:
            with sqlite3.connect(path) as target:
                source.backup(target)
        return f"sqlite:///{path}"
    from tests.app.conftest import _fresh_postgres

    databases = _fresh_postgres(template=request.getfixturevalue("_migrated_postgres"))
    url = next(databases)
    request.addfinalizer(lambda: list(databases))
    return url


def test_write_read_size_list_delete(store: ArtifactStore) -> None:
    store.write("jobs/a/samples/step_000001.png", b"png-1")
    store.write("jobs/a/checkpoints/step_000002.safetensors", b"x" * 3000)
    store.write("jobs/b/samples/step_000001.png", b"other")
    store.write("datasets/d.npy", b"npy")
    assert store.read("jobs/a/samples/step_000001.png") == b"png-1"
    assert store.size("jobs/a/checkpoints/step_000002.safetensors") == 3000
    assert store.size("jobs/a/nothing.png") is None
    assert not store.exists("jobs/a/nothing.png")
    assert sorted(store.list("jobs/a")) == [
        ("jobs/a/checkpoints/step_000002.safetensors", 3000),
        ("jobs/a/samples/step_000001.png", 5),
    ]
    assert len(list(store.list())) == 4
    # A folder prefix is a folder: jobs/a does not take in jobs/ab.
    store.write("jobs/ab/samples/step_000001.png", b"ab")
    assert len(list(store.list("jobs/a"))) == 2
    store.delete("jobs/a/samples/step_000001.png")
    store.delete("jobs/a/samples/step_000001.png")  # absent is fine
    with pytest.raises(ArtifactMissing):
        store.read("jobs/a/samples/step_000001.png")
    store.delete_job("a")
    assert list(store.list("jobs/a")) == []
    assert store.read("jobs/ab/samples/step_000001.png") == b"ab"
    assert store.read("jobs/b/samples/step_000001.png") == b"other"


def test_chunks_stream_a_large_file(store: ArtifactStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * (12 * 1024)  # 3 MiB
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    store.write_file("jobs/j/checkpoints/step_000010.safetensors", source)
    assert source.exists()  # without move the source stays
    chunks = list(store.chunks("jobs/j/checkpoints/step_000010.safetensors", 1024 * 1024))
    assert len(chunks) >= 3 and max(len(c) for c in chunks) <= 1024 * 1024
    assert b"".join(chunks) == data
    with pytest.raises(ArtifactMissing):
        store.chunks("jobs/j/none.bin")


def test_write_file_move_consumes_the_upload(store: ArtifactStore) -> None:
    upload = store.staging() / "upload.npy"
    upload.write_bytes(b"dataset bytes")
    store.write_file("datasets/x.npy", upload, move=True)
    assert store.read("datasets/x.npy") == b"dataset bytes"


def test_overwrite_is_atomic_for_readers(store: ArtifactStore) -> None:
    """Readers racing an overwrite see the old content or the new one, whole."""
    old, new = b"a" * 300_000, b"b" * 400_000
    store.write("jobs/j/samples/step_000001.png", old)
    seen: list[bytes] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(store.read("jobs/j/samples/step_000001.png"))
            except ArtifactMissing:
                seen.append(b"missing")

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(6):
            store.write("jobs/j/samples/step_000001.png", new if i % 2 == 0 else old)
    finally:
        stop.set()
        reader.join()
    assert seen and set(seen) <= {old, new}


def test_paths_outside_the_store_are_refused(store: ArtifactStore) -> None:
    for bad in ("../x", "/etc/passwd", "jobs/../../x", "", "a\\b"):
        with pytest.raises(StoreError):
            store.write(bad, b"x")
        with pytest.raises(StoreError):
            store.read(bad)


def test_fetch_checks_the_sha256(store: ArtifactStore) -> None:
    data = b"dataset" * 1000
    store.write("datasets/d1.npy", data)
    good = hashlib.sha256(data).hexdigest()
    local = store.fetch("datasets/d1.npy", sha256=good)
    assert local.read_bytes() == data
    store.write("datasets/d2.npy", data + b"!")
    if store.local_file("datasets/d2.npy") is None:  # a remote store downloads and checks
        with pytest.raises(StoreError, match="SHA-256"):
            store.fetch("datasets/d2.npy", sha256=good)
    with pytest.raises(ArtifactMissing):
        store.fetch("datasets/none.npy")


def test_checkpoints_round_trip_and_are_checked(store: ArtifactStore) -> None:
    import torch

    ckpt = make_checkpoint(5, {"generator.w": torch.ones(3)}, {"spec": {}})
    tensors, sidecar = store.write_checkpoint("jobs/j/checkpoints", ckpt)
    assert tensors == "jobs/j/checkpoints/step_000005.safetensors"
    assert sidecar == "jobs/j/checkpoints/step_000005.json"
    loaded = store.load_checkpoint(tensors, sha256=ckpt.sha256)
    assert loaded.step == 5 and loaded.data == ckpt.data
    with pytest.raises(CheckpointError, match="refusing"):
        store.load_checkpoint(tensors, sha256="0" * 64)
    store.write(tensors, ckpt.data[:-1] + b"\x00")
    with pytest.raises(CheckpointError, match="SHA-256"):
        store.load_checkpoint(tensors, sha256=ckpt.sha256)
    store.delete(sidecar)
    with pytest.raises(CheckpointError, match="missing"):
        store.load_checkpoint(tensors, sha256=None)


def test_store_urls() -> None:
    assert check_url("db") == ("db", "")
    assert check_url("s3://bucket/some/prefix") == ("s3", "bucket/some/prefix")
    assert check_url("file:///srv/artifacts") == ("file", "/srv/artifacts")
    assert check_url("./var/artifacts") == ("file", "./var/artifacts")
    for bad, reason in (
        ("gs://bucket", "'gs' is not a store"),
        ("s3://", "names no bucket"),
        ("file://relative/path", "file:///absolute/path"),
    ):
        with pytest.raises(StoreError, match=reason):
            check_url(bad)


def test_settings_name_a_bad_store_url() -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    with pytest.raises(ValidationError, match="GANFORGE_ARTIFACT_URL: 'ftp' is not a store"):
        Settings(artifact_url="ftp://host/x")
