"""The `db` artifact store's own guarantees (app/store_db.py), on SQLite and PostgreSQL: files
cut into chunk rows, no orphan chunks, folder prefixes that are folders even with LIKE's
wildcards in them, streamed reads that fail rather than truncate, write_file in chunks.
(The contract every store keeps is tests/app/test_stores.py.)"""

from __future__ import annotations

import hashlib
import io
import pathlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from app.models import ArtifactChunk, ArtifactFile
from app.store import ArtifactMissing, StoreError
from app.store_db import CHUNK, DatabaseStore


@pytest.fixture
def store(database_url: str, tmp_path: Path) -> Iterator[DatabaseStore]:
    store = DatabaseStore(database_url, cache=tmp_path / "cache")
    yield store
    store.close()


def _chunk_rows(engine: Engine) -> list[tuple[str, int, int]]:
    """(blob, seq, length) of every artifact_chunk row."""
    statement = select(
        ArtifactChunk.blob, ArtifactChunk.seq, func.length(ArtifactChunk.data)
    ).order_by(ArtifactChunk.blob, ArtifactChunk.seq)
    with engine.connect() as conn:
        return [(blob, seq, length) for blob, seq, length in conn.execute(statement)]


def _blob_of(engine: Engine, relative: str) -> str:
    with engine.connect() as conn:
        statement = select(ArtifactFile.blob).where(ArtifactFile.path == relative)
        return conn.execute(statement).scalar_one()


def _pattern(size: int) -> bytes:
    """`size` bytes that differ from chunk to chunk (a misordered chunk shows)."""
    block = bytes(range(251)) * 17
    return (block * (size // len(block) + 1))[:size]


def test_a_large_file_is_split_into_chunk_rows(store: DatabaseStore, engine: Engine) -> None:
    data = _pattern(2 * CHUNK + 5)
    store.write("jobs/j/checkpoints/step_000001.safetensors", data)
    rows = _chunk_rows(engine)
    assert [(seq, length) for _, seq, length in rows] == [(0, CHUNK), (1, CHUNK), (2, 5)]
    assert store.size("jobs/j/checkpoints/step_000001.safetensors") == len(data)
    assert store.read("jobs/j/checkpoints/step_000001.safetensors") == data
    pieces = list(store.chunks("jobs/j/checkpoints/step_000001.safetensors", 1000 * 1000))
    assert max(len(p) for p in pieces) <= 1000 * 1000 and b"".join(pieces) == data
    with engine.connect() as conn:
        row = conn.execute(select(ArtifactFile)).one()
    assert row.size == len(data) and row.sha256 == hashlib.sha256(data).hexdigest()


def test_an_empty_file(store: DatabaseStore, engine: Engine) -> None:
    store.write("jobs/j/empty.bin", b"")
    assert store.size("jobs/j/empty.bin") == 0
    assert store.read("jobs/j/empty.bin") == b""
    assert list(store.chunks("jobs/j/empty.bin")) == []
    assert list(store.list("jobs/j")) == [("jobs/j/empty.bin", 0)]
    assert _chunk_rows(engine) == []


def test_an_overwrite_leaves_no_orphan_chunks(store: DatabaseStore, engine: Engine) -> None:
    store.write("jobs/j/samples/step_000001.png", _pattern(3 * CHUNK))
    first = _blob_of(engine, "jobs/j/samples/step_000001.png")
    store.write("jobs/j/samples/step_000001.png", b"small")
    second = _blob_of(engine, "jobs/j/samples/step_000001.png")
    assert second != first  # a new blob, never the old one rewritten
    assert _chunk_rows(engine) == [(second, 0, 5)]
    source = store.staging() / "upload.bin"
    source.write_bytes(_pattern(CHUNK + 1))
    store.write_file("jobs/j/samples/step_000001.png", source, move=True)
    assert not source.exists()
    third = _blob_of(engine, "jobs/j/samples/step_000001.png")
    assert _chunk_rows(engine) == [(third, 0, CHUNK), (third, 1, 1)]
    store.delete("jobs/j/samples/step_000001.png")
    assert _chunk_rows(engine) == [] and list(store.list()) == []


@pytest.mark.parametrize("wild", ["_", "%"])
def test_delete_prefix_escapes_like_wildcards(
    store: DatabaseStore, engine: Engine, wild: str
) -> None:
    target = f"jobs/a{wild}b"
    neighbours = ["jobs/axb/f.png", "jobs/a" + wild + "bc/f.png", "jobs/aXb/f.png", "jobs/a/f"]
    if wild == "%":
        neighbours.append("jobs/a%xb/f.png")  # what an unescaped 'a%b' would match
    for relative in neighbours:
        store.write(relative, relative.encode())
    store.write(f"{target}/one.png", b"1")
    store.write(f"{target}/deep/two.png", b"2")
    assert [p for p, _ in store.list(target)] == [f"{target}/deep/two.png", f"{target}/one.png"]
    store.delete_prefix(target)
    assert [p for p, _ in store.list()] == sorted(neighbours)
    for relative in neighbours:
        assert store.read(relative) == relative.encode()
    assert len(_chunk_rows(engine)) == len(neighbours)  # the deleted files' chunks went too


def test_folder_prefixes_are_case_sensitive(store: DatabaseStore) -> None:
    """SQLite's LIKE ignores ASCII case; the store's folders do not."""
    store.write("jobs/ABC/f", b"upper")
    store.write("jobs/abc/f", b"lower")
    assert list(store.list("jobs/abc")) == [("jobs/abc/f", 5)]
    store.delete_prefix("jobs/abc")
    assert list(store.list()) == [("jobs/ABC/f", 5)]


def test_list_is_sorted_by_path(store: DatabaseStore) -> None:
    for relative in ("b/z", "a/B", "a/a", "a/b/c", "a/_x", "a-b/c"):
        store.write(relative, b"x")
    assert [p for p, _ in store.list()] == sorted(["b/z", "a/B", "a/a", "a/b/c", "a/_x", "a-b/c"])
    assert [p for p, _ in store.list("a")] == ["a/B", "a/_x", "a/a", "a/b/c"]
    with pytest.raises(StoreError):
        list(store.list("../a"))
    with pytest.raises(StoreError):
        store.delete_prefix("a/../..")


@pytest.mark.parametrize("change", ["delete", "overwrite", "delete_prefix"])
def test_a_stream_whose_file_goes_raises_instead_of_truncating(
    store: DatabaseStore, change: str
) -> None:
    data = _pattern(2 * CHUNK + 1)
    store.write("jobs/j/checkpoints/big.bin", data)
    stream = store.chunks("jobs/j/checkpoints/big.bin", CHUNK)
    received = [next(stream)]
    if change == "delete":
        store.delete("jobs/j/checkpoints/big.bin")
    elif change == "overwrite":
        store.write("jobs/j/checkpoints/big.bin", b"new content")
    else:
        store.delete_job("j")
    with pytest.raises(ArtifactMissing):
        received.extend(stream)
    assert received == [data[:CHUNK]]


def test_a_missing_file_is_reported_before_streaming(store: DatabaseStore) -> None:
    with pytest.raises(ArtifactMissing):
        store.chunks("jobs/j/none.bin")  # the call raises, not the first next()
    with pytest.raises(ArtifactMissing):
        store.read("jobs/j/none.bin")
    assert store.size("jobs/j/none.bin") is None
    store.delete("jobs/j/none.bin")  # absent is fine


class _CountingReader(io.BufferedReader):
    """A file that notes the size of every read asked of it."""

    reads: list[int] = []

    def read(self, size: int | None = -1) -> bytes:
        _CountingReader.reads.append(-1 if size is None else size)
        return super().read(size)


def test_write_file_streams_the_source_in_chunks(
    store: DatabaseStore, engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _pattern(3 * CHUNK + 1)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    real_open = pathlib.Path.open

    def counting_open(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if self == source and mode == "rb":
            return _CountingReader(io.FileIO(self, "rb"))
        return real_open(self, mode, *args, **kwargs)

    _CountingReader.reads = []
    monkeypatch.setattr(pathlib.Path, "open", counting_open)
    store.write_file("datasets/big.npy", source)
    monkeypatch.undo()
    assert _CountingReader.reads and all(0 < n <= CHUNK for n in _CountingReader.reads)
    assert source.exists()  # without move the source stays
    rows = _chunk_rows(engine)
    assert [(seq, length) for _, seq, length in rows] == [
        (0, CHUNK),
        (1, CHUNK),
        (2, CHUNK),
        (3, 1),
    ]
    assert store.read("datasets/big.npy") == data


def test_close_then_use_again(store: DatabaseStore) -> None:
    store.write("a/b", b"1")
    store.close()
    store.close()  # twice is fine
    assert store.read("a/b") == b"1"  # a new engine
    assert store.url == "db"


def test_racing_writers_of_one_path_leave_one_blob(store: DatabaseStore, engine: Engine) -> None:
    """Writers of a path that does not exist yet, then of one that does: the last write
    wins whole and every other blob's chunks are gone."""
    import threading

    contents = [bytes([i]) * (CHUNK + 10 * i) for i in range(6)]
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(3):
                store.write("jobs/j/samples/race.png", data)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(data,)) for data in contents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    final = store.read("jobs/j/samples/race.png")
    assert final in contents
    blob = _blob_of(engine, "jobs/j/samples/race.png")
    assert {row[0] for row in _chunk_rows(engine)} == {blob}
    assert sum(row[2] for row in _chunk_rows(engine)) == len(final)
