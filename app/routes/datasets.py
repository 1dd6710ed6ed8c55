"""/api/datasets: upload a .npy/.npz (multipart field `file`), list, get, delete.

The upload is streamed: the multipart body is parsed as it arrives and the part `file`
written in chunks to a temporary file in the store's `datasets/` folder; nothing holds
the whole body in memory. The size limit (settings.max_upload_bytes) applies to the file:
a request whose Content-Length already exceeds it (plus MULTIPART_OVERHEAD for the
envelope) is refused before its body is read, and any other is refused as soon as the file
passes the limit. The file is then checked (app.datasets) and renamed to
`datasets/<id>.npy`; on any failure the temporary files are removed and no row is written.

File errors are 413/422 with `detail` a list of `{field: "file", message: "file: ...",
loc, type}`, the shape the API's validation errors have; 404 and 409 carry a string.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.auth import CallerDep
from app.datasets import (
    DatasetFileError,
    DatasetTooLarge,
    describe_bytes,
    display_filename,
    file_sha256,
    fsync_file,
    prepare_upload,
    remove_quietly,
    usable_with,
)
from app.deps import SessionDep, SettingsDep, StoreDep, field_error
from app.models import ACTIVE, Dataset, Job, new_id
from app.store import ArtifactStore

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

router = APIRouter(prefix="/api")

# Room for the multipart envelope (boundaries, part headers, small extra fields) on top of
# the file itself, in the Content-Length check and the cap on the whole body.
MULTIPART_OVERHEAD = 64 * 1024
# Jobs in these states may still read their dataset: it cannot be deleted under them.


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    filename: str
    shape: list[int]
    dtype: str
    size: int
    sha256: str
    usable_with: list[str]
    created_at: datetime
    created_by: str | None = Field(None, description="the name of the token that uploaded it")

    @classmethod
    def of(cls, row: Dataset) -> DatasetOut:
        return cls(
            id=row.id,
            filename=row.filename,
            shape=list(row.shape),
            dtype=row.dtype,
            size=row.size,
            sha256=row.sha256,
            usable_with=usable_with(row.shape),
            created_at=row.created_at,
            created_by=row.created_by,
        )


class DatasetList(BaseModel):
    items: list[DatasetOut]


def file_error(status: int, reason: str) -> HTTPException:
    """An HTTP error about the field `file`, shaped as the API's validation errors."""
    kind = "too_large" if status == 413 else "value_error"
    return HTTPException(status, [field_error("file", reason, ["body", "file"], kind)])


def _too_large(max_bytes: int) -> HTTPException:
    return file_error(413, f"larger than the upload limit of {describe_bytes(max_bytes)}")


class _Refused(Exception):
    """Stop reading the body and answer with this error."""

    def __init__(self, error: HTTPException):
        self.error = error


class _MultipartUpload:
    """Streams a multipart body: the part `file` into a temporary file, other parts dropped."""

    def __init__(self, folder: Path, max_file_bytes: int):
        self.folder = folder
        self.max_file_bytes = max_file_bytes
        self.max_body_bytes = max_file_bytes + MULTIPART_OVERHEAD
        self.path: Path | None = None
        self.filename: str | None = None
        self.complete = False  # the part `file` ended with its boundary
        self._file: IO[bytes] | None = None
        self._in_file = False
        self._pending: list[bytes] = []
        self._file_bytes = 0
        self._body_bytes = 0
        self._header_name = b""
        self._header_value = b""
        self._disposition = b""

    # ---- parser callbacks (synchronous; file data is queued and written off the loop) --

    def _on_part_begin(self) -> None:
        self._disposition = b""
        self._in_file = False

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        if self._header_name.strip().lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        if options.get(b"name") != b"file":
            return
        if self.path is not None:
            raise _Refused(file_error(422, "send one file, not several"))
        self.filename = options.get(b"filename", b"").decode("utf-8", errors="replace")
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=self.folder)
        self.path = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._in_file = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file:
            return
        self._file_bytes += end - start
        if self._file_bytes > self.max_file_bytes:
            raise _Refused(_too_large(self.max_file_bytes))
        self._pending.append(data[start:end])

    def _on_part_end(self) -> None:
        if self._in_file:
            self._in_file = False
            self.complete = True

    def _flush(self) -> None:
        assert self._file is not None
        for piece in self._pending:
            self._file.write(piece)
        self._pending.clear()

    # ---- driving it --------------------------------------------------------------------

    async def read(self, request: Request) -> None:
        content_type, params = parse_options_header(request.headers.get("content-type"))
        boundary = params.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            raise _Refused(
                file_error(422, "send the array as multipart/form-data with the field `file`")
            )
        callbacks: MultipartCallbacks = {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
        }
        try:
            parser = MultipartParser(boundary, callbacks)
            async for chunk in request.stream():
                self._body_bytes += len(chunk)
                if self._body_bytes > self.max_body_bytes:
                    raise _Refused(_too_large(self.max_file_bytes))
                parser.write(chunk)
                if self._pending:
                    await run_in_threadpool(self._flush)
            parser.finalize()
        except FormParserError as exc:
            raise _Refused(file_error(422, f"malformed multipart body ({exc})")) from None
        finally:
            if self._file is not None:
                self._file.close()
        if self.path is None:
            raise _Refused(file_error(422, "Field required"))
        if not self.complete:
            raise _Refused(file_error(422, "the multipart body ended inside the file"))


def _check_content_length(request: Request, max_bytes: int) -> None:
    raw = request.headers.get("content-length")
    if raw is None or not raw.strip().isdigit():
        return
    if int(raw) > max_bytes + MULTIPART_OVERHEAD:
        raise _too_large(max_bytes)


def _store_upload(
    upload: Path,
    filename: str | None,
    session: Session,
    store: ArtifactStore,
    max_bytes: int,
    created_by: str | None = None,
) -> Dataset:
    """Check the uploaded file, move it into the store as .npy and record it (in a thread)."""
    prepared: Path | None = None
    final: Path | None = None
    try:
        prepared, shape, dtype = prepare_upload(upload, max_bytes=max_bytes)
        dataset_id = new_id()
        relative = ArtifactStore.dataset_path(dataset_id)
        fsync_file(prepared)
        size = prepared.stat().st_size
        sha256 = file_sha256(prepared)
        final = store.path(relative)
        os.replace(prepared, final)
        row = Dataset(
            id=dataset_id,
            filename=display_filename(filename),
            shape=list(shape),
            dtype=dtype,
            size=size,
            sha256=sha256,
            path=relative,
            created_by=created_by,
        )
        session.add(row)
        session.commit()
        return row
    except BaseException:
        session.rollback()
        remove_quietly(final, prepared)
        raise


UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": (
                                "a .npy, or an .npz holding one array (or among several the "
                                "one named x, data or arr_0): float16/32/64 or uint8, shape "
                                "(N, D), (N, H, W) or (N, C, H, W), N >= 2, C in (1, 3), "
                                "finite values"
                            ),
                        }
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
) -> DatasetOut:
    """Upload an array (multipart field `file`); stored as `.npy`, usable as `data.dataset_id`.

    `usable_with` lists the model kinds that take its shape: `mlp` always, `conv` for
    square images of 8, 16, 32 or 64 px.
    """
    max_bytes = settings.max_upload_bytes
    _check_content_length(request, max_bytes)
    folder = store.path("datasets")
    folder.mkdir(parents=True, exist_ok=True)
    upload = _MultipartUpload(folder, max_bytes)
    try:
        await upload.read(request)
        assert upload.path is not None
        row = await run_in_threadpool(
            _store_upload, upload.path, upload.filename, session, store, max_bytes, caller.token
        )
    except _Refused as refused:
        raise refused.error from None
    except DatasetTooLarge as exc:
        raise file_error(413, str(exc)) from None
    except DatasetFileError as exc:
        raise file_error(422, str(exc)) from None
    finally:
        remove_quietly(upload.path)
    return DatasetOut.of(row)


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
