"""Image datasets: a folder or an archive (.zip, .tar, .tar.gz/.tgz) of PNG, JPEG, WebP or BMP
files, decoded with Pillow into one uint8 array of shape (N, C, R, R) (DESIGN section 8).

Archives are read one member at a time (a tar as a stream, a zip through its directory), never
extracted: member names are only reported, never used as paths. Each member is read up to
`max_member_bytes` (a member that inflates past it is skipped, so a zip bomb costs at most that
much memory), and an image's pixel count is checked from its header before it is decoded
(Pillow's own bomb check is the second line). Members that are not usable images are listed
in `skipped` with the reason; an archive with no usable image is an ImageSourceError."""

from __future__ import annotations

import io
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "WEBP", "BMP")
MIN_RESOLUTION, MAX_RESOLUTION = 8, 256
DEFAULT_MAX_PIXELS = 40_000_000  # about 6,300 x 6,300
DEFAULT_MAX_MEMBER_BYTES = 64 * 1024 * 1024
Crop = Literal["center", "resize"]


class ImageSourceError(ValueError):
    """The folder or archive gives no dataset; the message says why."""


@dataclass
class Skipped:
    name: str
    reason: str


@dataclass
class ImageSet:
    array: np.ndarray  # uint8 (N, C, R, R)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def count(self) -> int:
        return int(self.array.shape[0])


@dataclass(frozen=True)
class Limits:
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES


def archive_kind(head: bytes) -> Literal["zip", "gzip", "tar"] | None:
    """What the first 512 bytes of a file say it is, whatever its name."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    return None


def zip_holds_arrays(path: Path) -> bool:
    """A .npz is a zip of .npy members: tell it from a zip of images by its members."""
    with zipfile.ZipFile(path) as archive:
        return any(info.filename.endswith(".npy") for info in archive.infolist())


def read_images(
    source: Path,
    resolution: int,
    *,
    channels: int | None = None,
    crop: Crop = "center",
    limits: Limits | None = None,
) -> ImageSet:
    """Every usable image under `source` (a folder, walked in name order, or an archive),
    scaled to `resolution` square. `channels` 1 or 3; None: 1 when every image is gray."""
    check_options(resolution, channels, crop)
    limits = limits or Limits()
    images: list[np.ndarray] = []  # each (3, R, R) uint8
    skipped: list[Skipped] = []
    members = 0
    for name, read in _members(source, limits):
        members += 1
        try:
            images.append(decode(read(), resolution, crop, limits))
        except _Unusable as exc:
            skipped.append(Skipped(name, str(exc)))
    if not images:
        raise ImageSourceError(_none_usable(members, skipped))
    array = np.stack(images)
    gray = bool((array[:, :1] == array).all())
    if channels == 1 or (channels is None and gray):
        array = _luma(array) if not gray else array[:, :1]
    return ImageSet(np.ascontiguousarray(array), skipped)


def check_options(resolution: int, channels: int | None, crop: str) -> None:
    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise ImageSourceError(
            f"resolution: must be {MIN_RESOLUTION} to {MAX_RESOLUTION}, not {resolution}"
        )
    if channels not in (None, 1, 3):
        raise ImageSourceError(f"channels: must be 1 or 3, not {channels}")
    if crop not in ("center", "resize"):
        raise ImageSourceError(f"crop: must be center or resize, not {crop!r}")


class _Unusable(Exception):
    """One member is not a usable image (the message is the reason)."""


def decode(data: bytes, resolution: int, crop: Crop, limits: Limits) -> np.ndarray:
    """One image file's bytes as a (3, R, R) uint8 array."""
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow's check, at twice its pixel limit
        raise _Unusable(f"too many pixels ({exc})") from None
    except (UnidentifiedImageError, SyntaxError, ValueError):
        raise _Unusable("not an image") from None
    if image.format not in FORMATS:
        raise _Unusable(f"{image.format} is not one of {', '.join(FORMATS)}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise _Unusable(f"too many pixels ({width} x {height}; at most {limits.max_pixels:,})")
    try:
        image = image.convert("RGB")
    except (OSError, SyntaxError, ValueError) as exc:
        raise _Unusable(f"corrupt ({exc})") from None
    image = _fit(image, resolution, crop)
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def _fit(image: Image.Image, resolution: int, crop: Crop) -> Image.Image:
    if crop == "resize":
        return image.resize((resolution, resolution), Image.Resampling.BICUBIC)
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(size, Image.Resampling.BICUBIC)
    left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def _luma(array: np.ndarray) -> np.ndarray:
    """RGB to one channel with ITU-R 601 weights, as Pillow's convert("L") does."""
    weights = np.array([299, 587, 114], dtype=np.uint32).reshape(1, 3, 1, 1)
    return ((array.astype(np.uint32) * weights).sum(1, keepdims=True) // 1000).astype(np.uint8)


def _none_usable(members: int, skipped: list[Skipped]) -> str:
    if members == 0:
        return "no files in it"
    first = skipped[0]
    return f"no usable image among {members} files (e.g. {first.name!r}: {first.reason})"


_Member = tuple[str, "_Reader"]


class _Reader:
    """Reads one member's bytes on demand, at most the limit; a member that cannot be read
    (a bad CRC, an unsupported compression) is unusable, not the end of the archive."""

    def __init__(self, stream: BinaryIO | None, limit: int, error: str = "") -> None:
        self.stream, self.limit, self.error = stream, limit, error

    def __call__(self) -> bytes:
        if self.stream is None:
            raise _Unusable(self.error)
        try:
            data = self.stream.read(self.limit + 1)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise _Unusable(f"corrupt ({exc})") from None
        if len(data) > self.limit:
            raise _Unusable(f"larger than {self.limit:,} bytes once inflated")
        return data


def _members(source: Path, limits: Limits) -> Iterator[_Member]:
    if source.is_dir():
        yield from _folder(source, limits)
        return
    with source.open("rb") as f:
        kind = archive_kind(f.read(512))
    if kind == "zip":
        yield from _zip(source, limits)
    elif kind in ("gzip", "tar"):
        yield from _tar(source, limits)
    else:
        raise ImageSourceError("not a folder, .zip, .tar or .tar.gz of images")


def _folder(root: Path, limits: Limits) -> Iterator[_Member]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            yield str(path.relative_to(root)), _Reader(f, limits.max_member_bytes)


def _zip(path: Path, limits: Limits) -> Iterator[_Member]:
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.is_dir():
                    continue
                try:
                    with archive.open(info) as member:
                        yield info.filename, _Reader(member, limits.max_member_bytes)
                except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
                    yield info.filename, _Reader(None, 0, f"corrupt ({exc})")
    except zipfile.BadZipFile as exc:
        raise ImageSourceError(f"not a readable zip ({exc})") from None


def _tar(path: Path, limits: Limits) -> Iterator[_Member]:
    try:
        with tarfile.open(path, mode="r|*") as archive:  # a stream: no seeking back
            for info in archive:
                if not info.isfile():
                    continue
                member = archive.extractfile(info)
                if member is not None:
                    yield info.name, _Reader(member, limits.max_member_bytes)  # type: ignore[arg-type]
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ImageSourceError(f"not a readable tar ({exc})") from None
