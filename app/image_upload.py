"""Archives of images uploaded to POST /api/datasets (DESIGN section 8): the form fields, what
kind of file arrived, the checks made before anything is decoded, and the stored array.

An upload is told by its content, never its name: a `.npy`, an `.npz` (a zip whose members
are `.npy` files), or a `.zip`, `.tar` or `.tar.gz` of images, decoded by
`trainer.images.read_images` into a uint8 (N, C, R, R) array stored as `.npy`.

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
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from app.datasets import DatasetFileError, DatasetTooLarge, describe_bytes, prepare_upload
from trainer.images import (
    DEFAULT_MAX_MEMBER_BYTES,
    MAX_RESOLUTION,
    MIN_RESOLUTION,
    Crop,
    ImageSourceError,
    Limits,
    Skipped,
    archive_kind,
    read_images,
    zip_holds_arrays,
)

FORM_FIELDS = ("resolution", "channels", "crop")
CHANNELS = (1, 3)
CROPS: tuple[str, ...] = get_args(Crop)
MAX_MEMBER_BYTES = DEFAULT_MAX_MEMBER_BYTES
_NPY_MAGIC = b"\x93NUMPY"
_READ_BYTES = 1024 * 1024

UploadKind = Literal["npy", "npz", "images"]


class FormFieldError(ValueError):
    """A form field with a bad value: `field` and `reason` (a 422 naming the field)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ImageOptions:
    """How an archive of images becomes an array; None: not given."""

    resolution: int | None = None
    channels: int | None = None
    crop: Crop | None = None

    def given(self) -> list[str]:
        return [name for name in FORM_FIELDS if getattr(self, name) is not None]


@dataclass
class Prepared:
    """A checked .npy ready to store, and what the upload made of its source."""

    path: Path
    shape: tuple[int, ...]
    dtype: str
    skipped: list[Skipped] = field(default_factory=list)


def parse_options(fields: Mapping[str, str]) -> ImageOptions:
    """The form fields as ImageOptions; an empty field counts as not given."""
    values = {name: fields.get(name, "").strip() for name in FORM_FIELDS}
    resolution = channels = None
    if values["resolution"]:
        resolution = _integer("resolution", values["resolution"])
        if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
            raise FormFieldError(
                "resolution", f"must be {MIN_RESOLUTION} to {MAX_RESOLUTION}, not {resolution}"
            )
    if values["channels"]:
        channels = _integer("channels", values["channels"])
        if channels not in CHANNELS:
            raise FormFieldError("channels", f"must be 1 or 3, not {channels}")
    crop = values["crop"] or None
    if crop is not None and crop not in CROPS:
        raise FormFieldError("crop", f"must be center or resize, not {crop[:50]!r}")
    return ImageOptions(resolution, channels, crop)  # type: ignore[arg-type]


def _integer(name: str, text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise FormFieldError(name, f"must be a whole number, not {text[:50]!r}") from None


def upload_kind(path: Path) -> UploadKind:
    """What an uploaded file is, from its first bytes (and a zip's member names)."""
    with path.open("rb") as fh:
        head = fh.read(2 * tarfile.BLOCKSIZE)
    if head.startswith(_NPY_MAGIC):
        return "npy"
    kind = archive_kind(head)
    if kind == "zip":
        try:
            return "npz" if zip_holds_arrays(path) else "images"
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise DatasetFileError(f"not a readable .npz or .zip file ({exc})") from None
    if kind is not None:
        return "images"
    if len(head) >= 2 * tarfile.BLOCKSIZE and not head.strip(b"\0"):
        raise DatasetFileError("an empty tar: no files in it")  # its end-of-archive blocks
    raise DatasetFileError(
        "not a .npy/.npz file, nor a .zip, .tar or .tar.gz of PNG/JPEG/WebP/BMP images"
    )


def check_options_fit(kind: UploadKind, options: ImageOptions) -> None:
    """Image options go with an archive of images, which needs a resolution."""
    if kind != "images":
        given = options.given()
        if given:
            raise FormFieldError(given[0], f"only used with an archive of images, not a .{kind}")
    elif options.resolution is None:
        raise FormFieldError(
            "resolution",
            f"needed for an archive of images: the side, {MIN_RESOLUTION} to {MAX_RESOLUTION} "
            "px, the images are scaled to",
        )


def prepare(upload: Path, options: ImageOptions, *, max_bytes: int) -> Prepared:
    """Turn an uploaded file into a checked .npy (the caller removes `upload` and, on
    failure of a later step, the returned path). DatasetFileError / DatasetTooLarge /
    FormFieldError when it is not usable."""
    kind = upload_kind(upload)
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

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
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
