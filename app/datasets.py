"""Uploaded datasets: checking an array file, storing it as .npy, finding it for the worker.

An upload is a `.npy`, or a `.npz` holding the array (exactly one, or among several the one
named `x`, `data` or `arr_0`, in that order). The format is told by the file's first bytes,
never by its name. The array must be what `trainer.data.load_array` takes:

- dtype float16, float32, float64 (either byte order) or uint8; never objects (pickle);
- shape (N, D), (N, H, W) or (N, C, H, W) with N >= 2, no empty axis and C in (1, 3);
- float values all finite.

The store keeps every dataset as `datasets/<id>.npy` (a `.npz` member is copied out as
it is: the members of an `.npz` are `.npy` files). Nothing here loads a whole array into
memory: `.npy` headers are read on their own, the data is memory-mapped and checked in
slices, `.npz` members are streamed out with a byte cap (a small `.npz` can inflate to
terabytes).
"""

from __future__ import annotations

import hashlib
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Literal

import numpy as np
from sqlalchemy.orm import Session

from app.models import Dataset
from app.store import ArtifactMissing, ArtifactStore, StoreError
from trainer.data import DataError, check_model_fits
from trainer.data import Dataset as TrainerDataset
from trainer.spec import Model

# Among several arrays in an .npz, the first of these names present is the data.
NPZ_PREFERRED = ("x", "data", "arr_0")
CHANNELS = (1, 3)
FLOAT_ITEMSIZES = (2, 4, 8)
# Bytes of the array checked for NaN/inf at a time.
_CHECK_BYTES = 16 * 1024 * 1024
_COPY_BYTES = 1024 * 1024
_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")

Shape = tuple[int, ...]


class DatasetFileError(ValueError):
    """An uploaded file that is not a usable array; `str()` is the reason (no field name)."""


class DatasetTooLarge(DatasetFileError):
    """The array (an .npz member once inflated) is larger than the limit."""


def detect_format(path: Path) -> Literal["npy", "npz"]:
    """`npy` or `npz` from the file's first bytes; DatasetFileError for anything else."""
    with path.open("rb") as fh:
        head = fh.read(len(_NPY_MAGIC))
    if head == _NPY_MAGIC:
        return "npy"
    if head[:4] in _ZIP_MAGICS:
        return "npz"
    raise DatasetFileError("not a .npy/.npz file")


def describe_bytes(n: int) -> str:
    """`536870912 bytes (512.0 MiB)`: a size as error messages name it."""
    if n < 1024:
        return f"{n} bytes"
    value = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{n} bytes ({value:.1f} {unit})"


def _pick_member(names: list[str]) -> str:
    arrays = [n for n in names if n.endswith(".npy")]
    if not arrays:
        raise DatasetFileError("the .npz holds no arrays")
    if len(arrays) == 1:
        return arrays[0]
    for name in NPZ_PREFERRED:
        if f"{name}.npy" in arrays:
            return f"{name}.npy"
    listed = ", ".join(n.removesuffix(".npy") for n in arrays[:10])
    more = ", ..." if len(arrays) > 10 else ""
    raise DatasetFileError(
        f"the .npz holds {len(arrays)} arrays ({listed}{more}); keep one, or name the data "
        + " or ".join(NPZ_PREFERRED)
    )


def extract_npz_member(src: Path, dest: Path, *, max_bytes: int | None = None) -> str:
    """Copy the data array of the .npz `src` out to the .npy file `dest`; its name is returned.

    Streams (never inflates the whole member in memory) and stops past `max_bytes`
    (DatasetTooLarge). `dest` is left behind only on success.
    """
    try:
        with zipfile.ZipFile(src) as archive:
            member = _pick_member(archive.namelist())
            declared = archive.getinfo(member).file_size
            if max_bytes is not None and declared > max_bytes:
                raise DatasetTooLarge(
                    f"the array {member.removesuffix('.npy')!r} is {describe_bytes(declared)} "
                    f"uncompressed, over the limit of {describe_bytes(max_bytes)}"
                )
            written = 0
            with archive.open(member) as inner, dest.open("wb") as out:
                while chunk := inner.read(_COPY_BYTES):
                    written += len(chunk)
                    if max_bytes is not None and written > max_bytes:
                        raise DatasetTooLarge(
                            f"the array {member.removesuffix('.npy')!r} inflates past the "
                            f"limit of {describe_bytes(max_bytes)}"
                        )
                    out.write(chunk)
    except DatasetFileError:
        dest.unlink(missing_ok=True)
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises many kinds (BadZipFile, zlib.error,
        # EOFError, RuntimeError for encrypted members, NotImplementedError, struct.error, ...)
        dest.unlink(missing_ok=True)
        raise DatasetFileError(f"not a readable .npz file ({type(exc).__name__}: {exc})") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return member.removesuffix(".npy")


def _read_header(path: Path) -> tuple[Shape, bool, np.dtype[np.generic], int]:
    """(shape, fortran_order, dtype, offset of the data) from a .npy header; no data read."""
    try:
        with path.open("rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version in ((2, 0), (3, 0)):
                # 3.0 differs from 2.0 only in the header's text encoding (utf-8 for
                # structured field names, which are refused below anyway).
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise DatasetFileError(f"unknown .npy format version {version[0]}.{version[1]}")
            offset = fh.tell()
    except DatasetFileError:
        raise
    except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds
        raise DatasetFileError(f"not a .npy/.npz file (bad .npy header: {exc})") from None
    return tuple(int(n) for n in shape), bool(fortran), dtype, offset


def check_dtype(dtype: np.dtype[np.generic]) -> None:
    if dtype.hasobject:
        raise DatasetFileError(
            f"dtype {dtype} not supported: object arrays need pickle, which is never loaded; "
            "use float or uint8"
        )
    if dtype.fields is not None or dtype.subdtype is not None:
        raise DatasetFileError(f"dtype {dtype} not supported: structured; use float or uint8")
    if dtype == np.uint8 or (dtype.kind == "f" and dtype.itemsize in FLOAT_ITEMSIZES):
        return
    raise DatasetFileError(f"dtype {dtype.name} not supported; use float or uint8")


def check_shape(shape: Shape) -> None:
    text = "(" + ", ".join(str(n) for n in shape) + ("," if len(shape) == 1 else "") + ")"
    if len(shape) not in (2, 3, 4):
        raise DatasetFileError(f"shape {text} not supported; use (N, D), (N, H, W) or (N, C, H, W)")
    if any(n == 0 for n in shape[1:]):
        raise DatasetFileError(f"shape {text} has an empty axis")
    if shape[0] < 2:
        raise DatasetFileError(f"shape {text} holds {shape[0]} example(s); need at least 2")
    if len(shape) == 4 and shape[1] not in CHANNELS:
        hint = ""
        if shape[3] in CHANNELS:
            hint = "; channels last? transpose to (N, C, H, W)"
        raise DatasetFileError(f"shape {text}: (N, C, H, W) needs C = 1 or 3, got {shape[1]}{hint}")


def _check_finite(path: Path, shape: Shape, dtype: np.dtype[np.generic]) -> None:
    if dtype.kind != "f":
        return
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DatasetFileError(f"cannot map the .npy data ({exc})") from None
    try:
        row_bytes = max(1, math.prod(shape[1:]) * dtype.itemsize)
        rows = max(1, _CHECK_BYTES // row_bytes)
        for start in range(0, shape[0], rows):
            if not np.isfinite(array[start : start + rows]).all():
                raise DatasetFileError("the array holds NaN or infinite values")
    finally:
        mm = getattr(array, "_mmap", None)
        if mm is not None:
            mm.close()
        del array


def _check_npy(path: Path) -> tuple[Shape, str]:
    shape, _fortran, dtype, offset = _read_header(path)
    check_dtype(dtype)
    check_shape(shape)
    expected = offset + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise DatasetFileError(
            f"truncated: the .npy header promises {expected - offset} bytes of data, "
            f"the file holds {max(0, actual - offset)}"
        )
    if actual > expected:
        raise DatasetFileError(
            f"{actual - expected} stray bytes after the array's data; not a .npy as numpy writes it"
        )
    _check_finite(path, shape, dtype)
    return shape, dtype.name


def validate_array_file(path: str | Path, *, max_bytes: int | None = None) -> tuple[Shape, str]:
    """(shape, dtype name) of a usable .npy/.npz; DatasetFileError naming the problem.

    An .npz is checked through a temporary copy of its data member beside it, capped at
    `max_bytes` (DatasetTooLarge).
    """
    path = Path(path)
    if detect_format(path) == "npy":
        return _check_npy(path)
    fd, tmp = tempfile.mkstemp(prefix=".validate-", suffix=".npy", dir=path.parent)
    os.close(fd)
    try:
        extract_npz_member(path, Path(tmp), max_bytes=max_bytes)
        return _check_npy(Path(tmp))
    finally:
        Path(tmp).unlink(missing_ok=True)


def prepare_upload(upload: Path, *, max_bytes: int) -> tuple[Path, Shape, str]:
    """Turn an uploaded file into a checked .npy: (its path, shape, dtype name).

    For a .npy that is `upload` itself; for an .npz a new temporary file beside it (the
    caller removes both). DatasetFileError / DatasetTooLarge when the file is not usable.
    """
    if detect_format(upload) == "npy":
        if upload.stat().st_size > max_bytes:
            raise DatasetTooLarge(f"larger than the limit of {describe_bytes(max_bytes)}")
        shape, dtype = _check_npy(upload)
        return upload, shape, dtype
    fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".npy", dir=upload.parent)
    os.close(fd)
    extracted = Path(tmp)
    try:
        extract_npz_member(upload, extracted, max_bytes=max_bytes)
        shape, dtype = _check_npy(extracted)
    except BaseException:
        extracted.unlink(missing_ok=True)
        raise
    return extracted, shape, dtype


def usable_with(shape: list[int] | Shape) -> list[str]:
    """The model kinds that take data of this shape, as the trainer decides
    (trainer.data.check_model_fits): always `mlp`; `conv` for square images of 8 to 64 px,
    `resnet` for square images of 16 to 128 px ((N, H, W) gains a channel axis when loaded)."""
    example = tuple(shape[1:]) if len(shape) != 3 else (1, *shape[1:])
    kinds = ["mlp"]
    for kind in ("conv", "resnet"):
        try:
            check_model_fits(Model.model_validate({"kind": kind}), TrainerDataset("array", example))
        except DataError:
            continue
        kinds.append(kind)
    return kinds


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_COPY_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(path: Path) -> None:
    with path.open("rb+") as fh:
        os.fsync(fh.fileno())


def display_filename(raw: str | None, *, default: str = "upload") -> str:
    """A client's file name made safe to show: last path component, no control characters,
    at most 300 characters (the column). Never used as a path."""
    name = (raw or "").replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        name = default
    return name[:300]


def resolve_dataset_path(session: Session, store: ArtifactStore, dataset_id: str) -> Path:
    """A local path of an uploaded dataset's .npy, for the trainer (`load_dataset`'s
    resolver): the stored file in a folder store, else a SHA-256-checked copy in the cache.

    Raises trainer.data.DataError("data.dataset_id: no dataset <id>") when there is no such
    dataset or its file is gone from the store.
    """
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise DataError(f"data.dataset_id: no dataset {dataset_id}")
    try:
        return store.fetch(row.path, sha256=row.sha256)
    except ArtifactMissing:
        raise DataError(
            f"data.dataset_id: no dataset {dataset_id} (its file is missing from the store)"
        ) from None
    except StoreError as exc:
        raise DataError(f"data.dataset_id: dataset {dataset_id}: {exc}") from None


def remove_quietly(*paths: Path | None) -> None:
    for path in paths:
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
