"""/api/datasets: upload a .npy/.npz or an archive of images (multipart field `file`), list,
get, delete.

The upload is streamed (app.multipart_upload): the multipart body is parsed as it arrives,
the part `file` written in chunks to a temporary file in the store's `datasets/` folder and
the form fields `resolution`, `channels`, `crop` kept; nothing holds the whole body in
memory, and the size limit (settings.max_upload_bytes) applies as the file arrives, chunked
or not. The file is then checked or decoded (app.image_upload, in a thread) and renamed to
`datasets/<id>.npy`; on any failure the temporary files are removed and no row is written.

File errors are 413/422 with `detail` a list of `{field: "file", message: "file: ...",
loc, type}`, the shape the API's validation errors have; a bad form field is a 422 naming
it the same way; 404 and 409 carry a string.
"""

from __future__ import annotations

import contextlib
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth import CallerDep
from app.datasets import (
    DatasetFileError,
    DatasetTooLarge,
    display_filename,
    file_sha256,
    fsync_file,
    remove_quietly,
    usable_with,
)
from app.deps import SessionDep, SettingsDep, StoreDep, unprocessable
from app.image_form import FORM_FIELDS, FormFieldError, ImageOptions, parse_options
from app.image_upload import prepare
from app.models import ACTIVE, Dataset, Job, new_id
from app.multipart_upload import (
    MULTIPART_OVERHEAD,
    MultipartUpload,
    Refused,
    check_content_length,
    file_error,
)
from app.store import ArtifactStore
from trainer.images import Skipped

__all__ = ["MULTIPART_OVERHEAD", "router"]

router = APIRouter(prefix="/api")

# The upload's answer lists at most this many skipped members (`skipped_count` has them all).
MAX_SKIPPED_LISTED = 1000


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    shape: list[int]
    count: int = Field(description="examples in it (images, for an archive): shape[0]")
    dtype: str
    size: int
    sha256: str
    usable_with: list[str]
    created_at: datetime
    created_by: str | None = Field(None, description="the name of the token that uploaded it")

    @classmethod
    def of(cls, row: Dataset) -> DatasetOut:
        return cls(**_fields(row))


def _fields(row: Dataset) -> dict[str, Any]:
    return {
        "id": row.id,
        "filename": row.filename,
        "shape": list(row.shape),
        "count": int(row.shape[0]),
        "dtype": row.dtype,
        "size": row.size,
        "sha256": row.sha256,
        "usable_with": usable_with(row.shape),
        "created_at": row.created_at,
        "created_by": row.created_by,
    }


class SkippedOut(BaseModel):
    name: str = Field(description="the member's name in the archive (never used as a path)")
    reason: str = Field(description="why it is not in the dataset: not an image, corrupt, ...")


class DatasetUploadOut(DatasetOut):
    """The stored dataset, and the archive members that did not become images."""

    skipped: list[SkippedOut] = Field(
        default_factory=list,
        description=f"members left out, with the reason (the first {MAX_SKIPPED_LISTED:,})",
    )
    skipped_count: int = Field(0, description="how many members were left out in all")

    @classmethod
    def stored(cls, row: Dataset, skipped: list[Skipped]) -> DatasetUploadOut:
        listed = [
            SkippedOut(name=s.name[:300], reason=s.reason[:300])
            for s in skipped[:MAX_SKIPPED_LISTED]
        ]
        return cls(**_fields(row), skipped=listed, skipped_count=len(skipped))


class DatasetList(BaseModel):
    items: list[DatasetOut]


def _store_upload(
    upload: MultipartUpload,
    options: ImageOptions,
    session: Session,
    store: ArtifactStore,
    created_by: str | None = None,
) -> tuple[Dataset, list[Skipped]]:
    """Check or decode the uploaded file, move it into the store as .npy and record it (in a
    thread)."""
    assert upload.path is not None
    prepared: Path | None = None
    stored: str | None = None
    try:
        made = prepare(upload.path, options, max_bytes=upload.max_file_bytes)
        prepared = made.path
        dataset_id = new_id()
        relative = ArtifactStore.dataset_path(dataset_id)
        fsync_file(prepared)
        size = prepared.stat().st_size
        sha256 = file_sha256(prepared)
        store.write_file(relative, prepared, move=True)
        stored = relative
        row = Dataset(
            id=dataset_id,
            filename=display_filename(upload.filename),
            shape=list(made.shape),
            dtype=made.dtype,
            size=size,
            sha256=sha256,
            path=relative,
            created_by=created_by,
        )
        session.add(row)
        session.commit()
        return row, made.skipped
    except BaseException:
        session.rollback()
        remove_quietly(prepared)
        if stored is not None:
            with contextlib.suppress(OSError, ValueError):
                store.delete(stored)
        raise


ARRAY_HELP = (
    "a .npy, or an .npz holding one array (or among several the one named x, data or arr_0): "
    "float16/32/64 or uint8, shape (N, D), (N, H, W) or (N, C, H, W), N >= 2, C in (1, 3), "
    "finite values; or a .zip, .tar, .tar.gz/.tgz of PNG, JPEG, WebP or BMP images (told by "
    "its content, not its name), stored as uint8 (N, C, R, R)"
)
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary", "description": ARRAY_HELP},
                        "resolution": {
                            "type": "integer",
                            "minimum": 8,
                            "maximum": 256,
                            "description": "archives of images (needed there): the square "
                            "side in px the images are scaled to",
                        },
                        "channels": {
                            "type": "integer",
                            "enum": [1, 3],
                            "description": "archives of images: 1 (gray) or 3 (RGB); left out, "
                            "1 when every image is gray, else 3",
                        },
                        "crop": {
                            "type": "string",
                            "enum": ["center", "resize"],
                            "default": "center",
                            "description": "archives of images: center (scale the short side, "
                            "crop the middle) or resize (squash to a square)",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/datasets",
    status_code=201,
    openapi_extra=UPLOAD_BODY,
    responses={413: {"description": "the file is over the upload limit"}},
)
async def upload_dataset(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    store: StoreDep,
    caller: CallerDep,
) -> DatasetUploadOut:
    """Upload an array or an archive of images (multipart field `file`); stored as `.npy`,
    usable as `data: {kind: array, dataset_id}`.

    `usable_with` lists the model kinds that take its shape: `mlp` always, `conv` for
    square images of 8, 16, 32 or 64 px. For an archive, `skipped` names each member that
    did not become an image, with the reason.
    """
    max_bytes = settings.max_upload_bytes
    check_content_length(request, max_bytes)
    upload = MultipartUpload(store.staging(), max_bytes, wanted=FORM_FIELDS)
    try:
        await upload.read(request)
        options = parse_options(upload.fields)
        row, skipped = await run_in_threadpool(
            _store_upload, upload, options, session, store, caller.token
        )
    except Refused as refused:
        raise refused.error from None
    except FormFieldError as exc:
        raise unprocessable(exc.field, exc.reason) from None
    except DatasetTooLarge as exc:
        raise file_error(413, str(exc)) from None
    except DatasetFileError as exc:
        raise file_error(422, str(exc)) from None
    finally:
        remove_quietly(upload.path)
    return DatasetUploadOut.stored(row, skipped)


@router.get("/datasets")
def list_datasets(
    session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> DatasetList:
    """Uploaded datasets, newest first."""
    query = select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)
    return DatasetList(items=[DatasetOut.of(row) for row in session.scalars(query)])


def dataset_or_404(session: Session, dataset_id: str) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise HTTPException(404, f"dataset {dataset_id} not found")
    return row


@router.get("/datasets/{dataset_id}")
def get_dataset(dataset_id: str, session: SessionDep) -> DatasetOut:
    return DatasetOut.of(dataset_or_404(session, dataset_id))


def jobs_using(session: Session, dataset_id: str, statuses: tuple[str, ...]) -> list[str]:
    """Ids of the jobs in `statuses` whose spec reads the dataset (`data.dataset_id`).

    The spec is JSON; it is searched here in Python so the query is the same on every backend.
    """
    rows = session.execute(select(Job.id, Job.spec).where(Job.status.in_(statuses)))
    using = []
    for job_id, spec in rows:
        data = spec.get("data") if isinstance(spec, dict) else None
        if isinstance(data, dict) and data.get("dataset_id") == dataset_id:
            using.append(job_id)
    return using


@router.delete("/datasets/{dataset_id}", status_code=204)
def delete_dataset(dataset_id: str, session: SessionDep, store: StoreDep) -> Response:
    """Remove a dataset and its file; 409 while a queued, running or cancelling job uses it."""
    row = dataset_or_404(session, dataset_id)
    using = jobs_using(session, dataset_id, ACTIVE)
    if using:
        shown = ", ".join(using[:10]) + (", ..." if len(using) > 10 else "")
        raise HTTPException(
            409,
            f"dataset {dataset_id} is used by {len(using)} queued, running or cancelling "
            f"job(s): {shown}; cancel them or wait for them to finish",
        )
    relative = row.path
    session.delete(row)
    session.commit()
    try:
        store.delete(relative)
    except (OSError, ValueError):
        pass  # the row is gone; a stray file is harmless
    return Response(status_code=204)
