"""What an uploaded dataset file is, and the form fields of an archive of images (DESIGN
section 8): shared by POST /api/datasets (app.image_upload) and `ganforge dataset upload`,
which checks a file here before sending it. Light on purpose: no torch, no database.

A file is told by its content, never its name: a `.npy`, an `.npz` (a zip whose members are
`.npy` files), or a `.zip`, `.tar` or `.tar.gz` of images.
"""

from __future__ import annotations

import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast, get_args

from trainer.images import MAX_RESOLUTION, MIN_RESOLUTION, Crop, archive_kind, zip_holds_arrays

FORM_FIELDS = ("resolution", "channels", "crop")
CHANNELS = (1, 3)
CROPS: tuple[str, ...] = get_args(Crop)
_NPY_MAGIC = b"\x93NUMPY"

UploadKind = Literal["npy", "npz", "images"]


class NotAnUpload(ValueError):
    """A file that is neither an array nor an archive; `str()` is the reason."""


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
    return ImageOptions(resolution, channels, cast("Crop | None", crop))


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
            raise NotAnUpload(f"not a readable .npz or .zip file ({exc})") from None
    if kind is not None:
        return "images"
    if len(head) >= 2 * tarfile.BLOCKSIZE and not head.strip(b"\0"):
        raise NotAnUpload("an empty tar: no files in it")  # its end-of-archive blocks
    raise NotAnUpload(
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
