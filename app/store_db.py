"""The `db` artifact store: files as chunked binary rows in the service's own database
(SQLite or PostgreSQL), so a deployment of several machines needs only PostgreSQL and Redis.

A file is an `artifact_file` row (path -> blob, size, SHA-256) and its blob's `artifact_chunk`
rows (seq 0, 1, ... of at most CHUNK bytes each). Blobs are never rewritten: a write inserts
its chunks under a new blob id and, in the same transaction, repoints the row and deletes the
old blob's chunks, so a reader sees the old file or the new one, whole. A streamed read
fetches one chunk per short query (no long transaction, no whole file in memory); a chunk
that has gone meanwhile (the file was overwritten or deleted) ends it with ArtifactMissing
rather than a truncated file.

Every operation is one transaction, tried again over a database restart for RETRY_FOR seconds
(app.db.retry_transient).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    delete,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from app.db import make_engine, retry_transient
from app.models import ArtifactChunk, ArtifactFile, utcnow
from app.store import CHUNK as READ_CHUNK
from app.store import ArtifactMissing, ArtifactStore, clean

T = TypeVar("T")

#: The most bytes one artifact_chunk row holds.
CHUNK = 4 * 1024 * 1024
#: How long an operation rides out an unreachable database (a restarting server).
RETRY_FOR = 15.0
#: Blob ids per `IN (...)` when deleting many files' chunks.
_BATCH = 500


def _under(folder: str) -> ColumnElement[bool]:
    """Paths under the store folder `folder` (a clean path): LIKE with its wildcards escaped,
    plus an exact prefix comparison, since SQLite's LIKE ignores ASCII case."""
    pattern = folder.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    head = folder + "/"
    return ArtifactFile.path.like(pattern + "/%", escape="\\") & (
        func.substr(ArtifactFile.path, 1, len(head)) == literal(head)
    )


def _drop_blobs(conn: Connection, blobs: Iterable[str]) -> None:
    """Delete every chunk of `blobs`."""
    pending = list(blobs)
    for start in range(0, len(pending), _BATCH):
        batch = pending[start : start + _BATCH]
        conn.execute(delete(ArtifactChunk).where(ArtifactChunk.blob.in_(batch)))


def _insert_file_row(conn: Connection, values: dict[str, Any]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING; whether the row went in."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(ArtifactFile).values(**values).on_conflict_do_nothing()
    return conn.execute(statement.returning(ArtifactFile.path)).first() is not None


def _repoint(conn: Connection, relative: str, blob: str, size: int, sha256: str) -> None:
    """Point `relative`'s row at `blob` (inserting it when new) and delete the blob it had.

    The row is locked (FOR UPDATE) before its old blob is read, so two writers of one path
    each delete the blob the other left, never one still in use; a row another writer
    inserted meanwhile is found, locked, on the next round."""
    values = {"blob": blob, "size": size, "sha256": sha256, "created_at": utcnow()}
    while True:
        old = conn.execute(
            select(ArtifactFile.blob).where(ArtifactFile.path == relative).with_for_update()
        ).scalar_one_or_none()
        if old is not None:
            conn.execute(update(ArtifactFile).where(ArtifactFile.path == relative).values(values))
            _drop_blobs(conn, [old])
            return
        if _insert_file_row(conn, {"path": relative, **values}):
            return


class DatabaseStore(ArtifactStore):
    """Artifacts in the service's database (GANFORGE_ARTIFACT_URL=db)."""

    def __init__(self, database_url: str, *, cache: Path):
        self.url = "db"
        self.cache = cache
        self.database_url = database_url
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    # ---- plumbing ---------------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The store's own engine, made on first use."""
        with self._lock:
            if self._engine is None:
                self._engine = make_engine(self.database_url)
            return self._engine

    def close(self) -> None:
        """Dispose of the engine (a later operation makes a new one)."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()

    def _transaction(self, body: Callable[[Connection], T], what: str) -> T:
        """`body(conn)` in one transaction, retried whole over database restarts."""

        def attempt() -> T:
            with self.engine.begin() as conn:
                return body(conn)

        return retry_transient(attempt, within=RETRY_FOR, what=f"artifact store: {what}")

    def _put(self, relative: str, pieces: Callable[[], Iterator[bytes]]) -> None:
        """Store the bytes `pieces()` yields (each at most CHUNK) at `relative`, atomically:
        a new blob's chunks, then the row repointed and the old blob deleted, one
        transaction."""

        def body(conn: Connection) -> None:
            blob, size, digest = uuid.uuid4().hex, 0, hashlib.sha256()
            for seq, piece in enumerate(pieces()):
                conn.execute(insert(ArtifactChunk).values(blob=blob, seq=seq, data=piece))
                size += len(piece)
                digest.update(piece)
            _repoint(conn, relative, blob, size, digest.hexdigest())

        self._transaction(body, f"write {relative}")

    # ---- the five operations (and read, delete_prefix) ---------------------------------------

    def write(self, relative: str, data: bytes) -> None:
        relative = clean(relative)
        view = memoryview(data)

        def pieces() -> Iterator[bytes]:
            for start in range(0, len(view), CHUNK):
                yield bytes(view[start : start + CHUNK])

        self._put(relative, pieces)

    def write_file(self, relative: str, source: Path, *, move: bool = False) -> None:
        relative = clean(relative)

        def pieces() -> Iterator[bytes]:  # opened anew by each attempt
            with Path(source).open("rb") as fh:
                while piece := fh.read(CHUNK):
                    yield piece

        self._put(relative, pieces)
        if move:
            Path(source).unlink(missing_ok=True)

    def size(self, relative: str) -> int | None:
        relative = clean(relative)
        return self._transaction(
            lambda conn: conn.execute(
                select(ArtifactFile.size).where(ArtifactFile.path == relative)
            ).scalar_one_or_none(),
            f"size {relative}",
        )

    def read(self, relative: str) -> bytes:
        """The whole file, from one statement (one snapshot): the row joined to its chunks."""
        relative = clean(relative)
        statement = (
            select(ArtifactFile.size, ArtifactChunk.data)
            .select_from(ArtifactFile)
            .outerjoin(ArtifactChunk, ArtifactChunk.blob == ArtifactFile.blob)
            .where(ArtifactFile.path == relative)
            .order_by(ArtifactChunk.seq)
        )
        rows = self._transaction(lambda conn: conn.execute(statement).all(), f"read {relative}")
        if not rows:
            raise ArtifactMissing(relative)
        data = b"".join(row.data for row in rows if row.data is not None)
        if len(data) != rows[0].size:  # cannot happen: the blob's chunks go with its row
            raise ArtifactMissing(relative)
        return data

    def chunks(self, relative: str, chunk_size: int = READ_CHUNK) -> Iterator[bytes]:
        relative = clean(relative)
        found = self._transaction(
            lambda conn: conn.execute(
                select(ArtifactFile.blob, ArtifactFile.size).where(ArtifactFile.path == relative)
            ).one_or_none(),
            f"read {relative}",
        )
        if found is None:
            raise ArtifactMissing(relative)
        return self._stream(relative, found.blob, found.size, chunk_size)

    def _stream(self, relative: str, blob: str, size: int, chunk_size: int) -> Iterator[bytes]:
        """`blob`'s bytes, one stored chunk per query, cut into pieces of `chunk_size`."""
        sent, seq = 0, 0
        while sent < size:
            data = self._chunk(relative, blob, seq)
            if not data:  # overwritten or deleted since the first chunk
                raise ArtifactMissing(relative)
            view = memoryview(data)
            for start in range(0, len(view), chunk_size):
                yield bytes(view[start : start + chunk_size])
            sent, seq = sent + len(data), seq + 1

    def _chunk(self, relative: str, blob: str, seq: int) -> bytes | None:
        """One stored chunk of `blob`, in a query of its own; None when it is gone."""
        statement = select(ArtifactChunk.data).where(
            ArtifactChunk.blob == blob, ArtifactChunk.seq == seq
        )
        return self._transaction(
            lambda conn: conn.execute(statement).scalar_one_or_none(), f"read {relative}"
        )

    def delete(self, relative: str) -> None:
        relative = clean(relative)

        def body(conn: Connection) -> None:
            statement = delete(ArtifactFile).where(ArtifactFile.path == relative)
            gone = conn.execute(statement.returning(ArtifactFile.blob)).scalars().all()
            _drop_blobs(conn, gone)

        self._transaction(body, f"delete {relative}")

    def delete_prefix(self, prefix: str) -> None:
        """Every file under the folder `prefix`, rows and chunks, in one transaction."""
        folder = clean(prefix)

        def body(conn: Connection) -> None:
            statement = delete(ArtifactFile).where(_under(folder))
            gone = conn.execute(statement.returning(ArtifactFile.blob)).scalars().all()
            _drop_blobs(conn, gone)

        self._transaction(body, f"delete {folder}/")

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        statement = select(ArtifactFile.path, ArtifactFile.size)
        if prefix:
            statement = statement.where(_under(clean(prefix)))
        rows = self._transaction(
            lambda conn: [(row.path, row.size) for row in conn.execute(statement)],
            f"list {prefix or '/'}",
        )
        return iter(sorted(rows))  # code point order, whatever the database's collation
