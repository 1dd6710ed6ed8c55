"""Archives of images uploaded to POST /api/datasets (DESIGN section 8): the checks made
before anything is decoded, and the stored array.

An archive (app.image_form tells it from a `.npy`/`.npz` and reads the form fields) is
decoded by `trainer.images.read_images` into a uint8 (N, C, R, R) array stored as `.npy`.

Before decoding, one pass over the archive's member headers bounds what the decode can cost
(nothing is extracted, member names are only counted):

- everything the archive inflates to (zip members' sizes, which `zipfile` never reads past;
  the whole decompressed tar stream, through a counting reader, so that even a tar header
  `tarfile` reads into memory in one piece, a GNU long name or a pax header, stops at the
  limit) stays within the upload limit;
- the images decode (three channels each, as the decoder holds them) to at most the upload
  limit, counting every file of the archive as an image.

Past either, the upload is refused as too large (DatasetTooLarge, a 413). Within them, one
member is read into memory at most MAX_MEMBER_BYTES at a time; an image whose header claims
more pixels than `trainer.images`' limit is skipped unread (Pillow's own limit is the second
line).
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.datasets import DatasetFileError, DatasetTooLarge, describe_bytes, prepare_upload
from app.image_form import ImageOptions, NotAnUpload, check_options_fit, upload_kind
from trainer.images import (
    DEFAULT_MAX_MEMBER_BYTES,
    ImageSourceError,
    Limits,
    Skipped,
    archive_kind,
    read_images,
)

MAX_MEMBER_BYTES = DEFAULT_MAX_MEMBER_BYTES
_READ_BYTES = 1024 * 1024


@dataclass
class Prepared:
    """A checked .npy ready to store, and what the upload made of its source."""

    path: Path
    shape: tuple[int, ...]
    dtype: str
    skipped: list[Skipped] = field(default_factory=list)


def prepare(upload: Path, options: ImageOptions, *, max_bytes: int) -> Prepared:
    """Turn an uploaded file into a checked .npy (the caller removes `upload` and, on
    failure of a later step, the returned path). DatasetFileError / DatasetTooLarge /
    FormFieldError when it is not usable."""
    try:
        kind = upload_kind(upload)
    except NotAnUpload as exc:
        raise DatasetFileError(str(exc)) from None
    check_options_fit(kind, options)
    if kind != "images":
        path, shape, dtype = prepare_upload(upload, max_bytes=max_bytes)
        return Prepared(path, shape, dtype)
    assert options.resolution is not None
    check_archive_bounds(upload, options.resolution, max_bytes=max_bytes)
    limits = Limits(max_member_bytes=min(max_bytes, MAX_MEMBER_BYTES))
    try:
        images = read_images(
            upload,
            options.resolution,
            channels=options.channels,
            crop=options.crop or "center",
            limits=limits,
        )
    except ImageSourceError as exc:
        raise DatasetFileError(str(exc)) from None
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".npy", dir=upload.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            np.save(out, images.array)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Prepared(Path(tmp), tuple(images.array.shape), "uint8", images.skipped)


# ---- bounds, from the member headers alone ------------------------------------------------


class _CountingReader(io.RawIOBase):
    """Reads through `inner`, refusing (DatasetTooLarge) once more than `limit` bytes came."""

    def __init__(self, inner: io.BufferedIOBase, limit: int):
        self.inner, self.limit, self.count = inner, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(min(len(buffer), _READ_BYTES))
        self.count += len(data)
        if self.count > self.limit:
            raise DatasetTooLarge(f"the archive inflates past the limit of {_limit(self.limit)}")
        buffer[: len(data)] = data
        return len(data)


def _limit(max_bytes: int) -> str:
    return f"{describe_bytes(max_bytes)} (GANFORGE_MAX_UPLOAD_BYTES)"


def archive_files(path: Path, *, max_bytes: int) -> int:
    """How many files the archive holds; DatasetTooLarge when it inflates past `max_bytes`,
    DatasetFileError when it cannot be read."""
    with path.open("rb") as fh:
        kind = archive_kind(fh.read(512))
    if kind == "zip":
        return _zip_files(path, max_bytes)
    try:
        with path.open("rb") as raw:
            inner: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if kind == "gzip" else raw
            counted = io.BufferedReader(_CountingReader(inner, max_bytes), _READ_BYTES)
            with tarfile.open(fileobj=counted, mode="r|") as archive:
                return sum(1 for info in archive if info.isfile())
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        what = "tar.gz" if kind == "gzip" else "tar"
        raise DatasetFileError(f"not a readable .{what} ({exc})") from None


def _zip_files(path: Path, max_bytes: int) -> int:
    try:
        with zipfile.ZipFile(path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise DatasetFileError(f"not a readable .zip ({exc})") from None
    inflated = sum(info.file_size for info in infos)
    if inflated > max_bytes:
        raise DatasetTooLarge(
            f"the archive inflates to {describe_bytes(inflated)}, past the limit of "
            f"{_limit(max_bytes)}"
        )
    return len(infos)


def check_archive_bounds(path: Path, resolution: int, *, max_bytes: int) -> None:
    """Refuse an archive that inflates, or whose images decode, past `max_bytes`."""
    files = archive_files(path, max_bytes=max_bytes)
    decoded = files * 3 * resolution * resolution
    if decoded > max_bytes:
        raise DatasetTooLarge(
            f"{files:,} files at {resolution} px decode to up to {describe_bytes(decoded)}, "
            f"past the limit of {_limit(max_bytes)}; send fewer images or a smaller resolution"
        )
