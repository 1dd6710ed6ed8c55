"""`ganforge dataset upload PATH`: send a folder of images, an archive of them, or a .npy/.npz
to POST /api/datasets, with a progress bar.

A folder goes as a tar made while it is sent (app.tarstream), with no length up front, so
httpx sends it chunked; a file goes as it is, with its length. The file's kind and the form
fields are checked here first with the server's own checks (app.image_upload), so a mistake
is reported before anything is sent. Exit status: 0 stored; 2 the path or a field is not
usable (here, or the server's 413/422 naming the field); 1 any other answer, or the server
could not be reached.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx2

from app.cli_options import ClientError, created
from app.image_form import (
    FormFieldError,
    NotAnUpload,
    UploadKind,
    check_options_fit,
    parse_options,
    upload_kind,
)
from app.tarstream import FolderTar

Progress = Callable[[int], None]
READ_BYTES = 1024 * 1024
SHOWN_SKIPPED = 20


class _ChunkReader(io.RawIOBase):
    """An iterator of byte strings as a stream with no length (so it is sent chunked)."""

    def __init__(self, chunks: Iterable[bytes], progress: Progress):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")
        self._progress = progress

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        self._progress(n)
        return n


class _FileReader(io.RawIOBase):
    """A file read through, each read reported; its size is known (a Content-Length)."""

    def __init__(self, path: Path, progress: Progress):
        self._file = path.open("rb")
        self._progress = progress

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._file.fileno()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer: Any) -> int:
        n = self._file.readinto(buffer)
        self._progress(n)
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


@dataclass(frozen=True)
class Source:
    """What is sent: a folder as a tar, or a file as it is."""

    path: Path
    kind: UploadKind
    filename: str
    size: int
    tar: FolderTar | None = None

    @contextmanager
    def stream(self, progress: Progress) -> Iterator[IO[bytes]]:
        raw: io.RawIOBase = (
            _ChunkReader(self.tar, progress) if self.tar else _FileReader(self.path, progress)
        )
        with io.BufferedReader(raw, READ_BYTES) as stream:
            yield stream


def source_for(path: Path, fields: dict[str, str]) -> Source:
    """The source for PATH, its kind and the fields checked; ClientError (2) naming what is
    wrong."""
    try:
        options = parse_options(fields)
        if path.is_dir():
            tar = FolderTar(path)
            if not tar.entries:
                raise ClientError(f"{path}: no files in the folder", 2)
            check_options_fit("images", options)
            return Source(path, "images", f"{path.resolve().name or 'folder'}.tar", tar.size, tar)
        kind = upload_kind(path)
        check_options_fit(kind, options)
    except (NotAnUpload, OSError) as exc:
        raise ClientError(f"{path}: {exc}", 2) from None
    except FormFieldError as exc:  # "resolution: needed for ..."
        raise ClientError(str(exc), 2) from None
    return Source(path, kind, path.name, path.stat().st_size)


def upload(
    client: httpx2.Client, source: Source, fields: dict[str, str], progress: Progress
) -> dict[str, Any]:
    """POST the source; the server's answer (the stored dataset)."""
    with source.stream(progress) as stream:
        answer = client.post(
            "/api/datasets",
            files={"file": (source.filename, stream, "application/octet-stream")},
            data=fields,
            timeout=httpx2.Timeout(30.0, read=None),  # decoding many images takes a while
        )
    return created(answer, invalid=(413, 422))


def report(made: dict[str, Any], server: str) -> list[str]:
    """The lines `ganforge dataset upload` prints about a stored dataset."""
    what = "images" if made.get("dtype") == "uint8" and len(made["shape"]) == 4 else "examples"
    lines = [
        f"dataset {made['id']}: {made['count']} {what}, shape {made['shape']}, "
        f"{made['dtype']}, {made['size']:,} bytes: {server}/api/datasets/{made['id']}"
    ]
    skipped = made.get("skipped", [])
    lines += [f"skipped {s['name']}: {s['reason']}" for s in skipped[:SHOWN_SKIPPED]]
    more = made.get("skipped_count", len(skipped)) - min(len(skipped), SHOWN_SKIPPED)
    if more > 0:
        lines.append(f"... and {more} more skipped")
    lines.append(f"use it in a spec as  data: {{kind: array, dataset_id: {made['id']}}}")
    return lines
