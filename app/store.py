"""Artifact stores (DESIGN.md section 10): where samples, checkpoints and datasets live.

`GANFORGE_ARTIFACT_URL` picks one:

    file:///path          a folder (default ./var/artifacts; GANFORGE_ARTIFACT_DIR still works)
    s3://bucket/prefix    any S3-compatible service (app/store_s3.py)
    db                    chunked rows in the service's own database (app/store_db.py)

The database keeps paths relative to the store, so a store can move (or be mounted at another
path, or be migrated to another kind: `ganforge artifacts migrate`) without rewriting rows.
Layout, the same names as `ganforge train --out DIR` (DESIGN.md section 6):

    jobs/<job id>/samples/step_000200.png
    jobs/<job id>/checkpoints/step_000500.safetensors   (+ step_000500.json sidecar)
    datasets/<dataset id>.npy

Every store writes atomically (a reader sees the old file or the new one, never half of one)
and streams reads in chunks, so a download never holds a whole checkpoint in memory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from trainer.checkpoint import Checkpoint, CheckpointError, atomic_write, parse_checkpoint

CHUNK = 1024 * 1024


class StoreError(ValueError):
    """A path that does not belong to the store, or a store URL that names none."""


class ArtifactMissing(FileNotFoundError):
    """The store has no file at that path."""

    def __init__(self, relative: str):
        super().__init__(f"{relative} is not in the artifact store")
        self.relative = relative


def clean(relative: str) -> str:
    """A store path as stored: relative, '/'-separated, no '.', '..' or empty parts."""
    if not relative or "\\" in relative or "\x00" in relative:
        raise StoreError(f"path: {relative!r} is not a store path")
    parts = PurePosixPath(relative).parts
    if relative.startswith("/") or any(p in (".", "..") for p in parts) or not parts:
        raise StoreError(f"path: {relative!r} is outside the artifact store")
    return "/".join(parts)


class ArtifactStore(ABC):
    """One interface over the three stores. Paths are store paths (`clean`)."""

    #: The URL this store was opened from (what GANFORGE_ARTIFACT_URL would say).
    url: str
    #: A local folder for a remote store's downloads (datasets the trainer memory-maps).
    cache: Path

    # ---- the five operations each store implements ----------------------------------------

    @abstractmethod
    def write(self, relative: str, data: bytes) -> None:
        """Store `data` at `relative`, atomically."""

    @abstractmethod
    def write_file(self, relative: str, source: Path, *, move: bool = False) -> None:
        """Store a local file's content at `relative`, atomically and in chunks; with `move`
        the source may be consumed (renamed into the store when it is on the same disk)."""

    @abstractmethod
    def size(self, relative: str) -> int | None:
        """The stored file's size in bytes; None when there is none."""

    @abstractmethod
    def chunks(self, relative: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        """The file's bytes in chunks; ArtifactMissing (before the first chunk) when absent."""

    @abstractmethod
    def delete(self, relative: str) -> None:
        """Remove a file; absent is fine."""

    @abstractmethod
    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        """(store path, size) of every file under the folder `prefix` ('' for all)."""

    # ---- built on them (a store may do better) -----------------------------------------------

    def read(self, relative: str) -> bytes:
        return b"".join(self.chunks(relative))

    def exists(self, relative: str) -> bool:
        return self.size(relative) is not None

    def delete_prefix(self, prefix: str) -> None:
        """Remove every file under the folder `prefix`."""
        for relative, _ in list(self.list(prefix)):
            self.delete(relative)

    def local_file(self, relative: str) -> Path | None:
        """The file on this machine's disk, when the store is a folder; else None."""
        return None

    def staging(self) -> Path:
        """A local folder for files on their way in (uploads), on the store's disk if it has
        one, so `write_file(move=True)` is a rename."""
        folder = self.cache / "staging"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def fetch(self, relative: str, *, sha256: str | None = None) -> Path:
        """A local copy of a stored file (for np.load's memory map): the file itself in a
        folder store; else a download into the cache, checked against `sha256` when given
        and kept for next time (stored paths are never rewritten with other content: ids and
        steps are new)."""
        relative = clean(relative)
        key = hashlib.sha256(f"{self.url}\n{relative}".encode()).hexdigest()[:32]
        target = self.cache / "files" / f"{key}-{PurePosixPath(relative).name}"
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as fh:
                for chunk in self.chunks(relative):
                    digest.update(chunk)
                    fh.write(chunk)
            if sha256 is not None and digest.hexdigest() != sha256:
                raise StoreError(
                    f"{relative}: SHA-256 {digest.hexdigest()[:12]}... in the store, "
                    f"{sha256[:12]}... was recorded; refusing to use it"
                )
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load_checkpoint(self, relative: str, *, sha256: str | None) -> Checkpoint:
        """A checkpoint's tensors and sidecar from the store, SHA-256 checked before use."""
        name = PurePosixPath(relative).name
        sidecar = str(PurePosixPath(relative).with_suffix(".json"))
        try:
            data = self.read(relative)
            meta = self.read(sidecar)
        except ArtifactMissing as exc:
            raise CheckpointError(f"checkpoint: {exc.relative} is missing from the store") from None
        return parse_checkpoint(data, meta, name=name, expected_sha256=sha256)

    def write_checkpoint(self, folder: str, ckpt: Checkpoint) -> tuple[str, str]:
        """Tensors first, sidecar last (a sidecar means its tensors are complete); the two
        store paths."""
        stem = f"{folder}/step_{ckpt.step:06d}"
        tensors, sidecar = f"{stem}.safetensors", f"{stem}.json"
        self.write(tensors, ckpt.data)
        self.write(sidecar, ckpt.sidecar_json.encode())
        return tensors, sidecar

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to let go of
        """Let go of connections (the `db` store's engine); the store stays usable."""

    # ---- where things go ------------------------------------------------------------------

    @staticmethod
    def job_dir(job_id: str) -> str:
        return f"jobs/{job_id}"

    @classmethod
    def sample_path(cls, job_id: str, step: int) -> str:
        return f"{cls.job_dir(job_id)}/samples/step_{step:06d}.png"

    @classmethod
    def checkpoint_dir(cls, job_id: str) -> str:
        return f"{cls.job_dir(job_id)}/checkpoints"

    @staticmethod
    def sidecar_path(relative: str) -> str:
        return str(PurePosixPath(relative).with_suffix(".json"))

    @staticmethod
    def dataset_path(dataset_id: str) -> str:
        return f"datasets/{dataset_id}.npy"

    def delete_job(self, job_id: str) -> None:
        """Remove every file of a job."""
        self.delete_prefix(self.job_dir(job_id))


class FileStore(ArtifactStore):
    """A folder: the default, and a shared (NFS) mount for several machines."""

    def __init__(self, root: str | Path, cache: Path | None = None):
        self.root = Path(root).resolve()
        self.url = self.root.as_uri()
        self.cache = cache or self.root / ".cache"

    def path(self, relative: str) -> Path:
        """The absolute path of a stored file; refuses anything outside the store."""
        full = (self.root / clean(relative)).resolve()
        if not full.is_relative_to(self.root):
            raise StoreError(f"path: {relative!r} is outside the artifact store")
        return full

    def write(self, relative: str, data: bytes) -> None:
        atomic_write(self.path(relative), data)

    def write_file(self, relative: str, source: Path, *, move: bool = False) -> None:
        full = self.path(relative)
        full.parent.mkdir(parents=True, exist_ok=True)
        if move:
            try:
                os.replace(source, full)
                return
            except OSError:
                pass  # another disk: copy below
        with Path(source).open("rb") as src:
            atomic_write(full, iter(lambda: src.read(CHUNK), b""))

    def size(self, relative: str) -> int | None:
        try:
            full = self.path(relative)
            return full.stat().st_size if full.is_file() else None
        except OSError:
            return None

    def chunks(self, relative: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        try:
            fh = self.path(relative).open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactMissing(relative) from None
        return _file_chunks(fh, chunk_size)

    def read(self, relative: str) -> bytes:
        try:
            return self.path(relative).read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ArtifactMissing(relative) from None

    def delete(self, relative: str) -> None:
        self.path(relative).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> None:
        shutil.rmtree(self.path(prefix), ignore_errors=True)

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        top = self.path(prefix) if prefix else self.root
        if not top.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(top):
            here = Path(dirpath)
            dirnames[:] = sorted(
                d for d in dirnames if not (here == self.root and d.startswith("."))
            )
            for name in sorted(filenames):
                if name.startswith(".") and name.endswith(".tmp"):
                    continue  # a write in progress
                full = here / name
                try:
                    size = full.stat().st_size
                except OSError:
                    continue
                yield full.relative_to(self.root).as_posix(), size

    def local_file(self, relative: str) -> Path | None:
        full = self.path(relative)
        return full if full.is_file() else None

    def staging(self) -> Path:
        folder = self.root / ".staging"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def fetch(self, relative: str, *, sha256: str | None = None) -> Path:
        full = self.path(relative)
        if not full.is_file():
            raise ArtifactMissing(relative)
        return full


def _file_chunks(fh, chunk_size: int) -> Iterator[bytes]:  # type: ignore[no-untyped-def]
    with fh:
        while chunk := fh.read(chunk_size):
            yield chunk


def check_url(url: str) -> tuple[str, str]:
    """(kind, where) of a store URL: ("db", ""), ("s3", "bucket/prefix") or ("file", path);
    a StoreError names what is wrong."""
    if url == "db":
        return "db", ""
    if url.startswith("s3://"):
        where = url.removeprefix("s3://").strip("/")
        if not where or where.startswith("/"):
            raise StoreError(f"GANFORGE_ARTIFACT_URL: {url!r} names no bucket (s3://bucket/prefix)")
        return "s3", where
    if url.startswith("file://"):
        path = url.removeprefix("file://")
        if path.startswith("localhost/"):
            path = path.removeprefix("localhost")
        if not path.startswith("/"):
            raise StoreError(f"GANFORGE_ARTIFACT_URL: {url!r}: a file URL is file:///absolute/path")
        return "file", path
    if "://" in url or not url:
        scheme = url.split("://", 1)[0]
        raise StoreError(
            f"GANFORGE_ARTIFACT_URL: {scheme!r} is not a store; use file:///path, "
            "s3://bucket/prefix or db"
        )
    return "file", url
