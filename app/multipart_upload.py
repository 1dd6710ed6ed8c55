"""Reading a multipart/form-data upload as it arrives (POST /api/datasets).

The part `file` is written in chunks to a temporary file; nothing holds the whole body in
memory. Small form fields the caller asks for (`wanted`) are kept as text, up to
MAX_FIELD_BYTES each; every other part is dropped unread. The size limit applies to the
file: a request whose Content-Length already exceeds it (plus MULTIPART_OVERHEAD for the
envelope) is refused before its body is read, and any other (chunked, or lying about its
length) as soon as the file passes it. Errors are raised as `Refused`, holding the
HTTPException to answer with.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING

from fastapi import HTTPException, Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from app.datasets import describe_bytes
from app.deps import field_error, unprocessable

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks

# Room for the multipart envelope (boundaries, part headers, small extra fields) on top of
# the file itself, in the Content-Length check and the cap on the whole body.
MULTIPART_OVERHEAD = 64 * 1024
MAX_FIELD_BYTES = 1000


def file_error(status: int, reason: str) -> HTTPException:
    """An HTTP error about the field `file`, shaped as the API's validation errors."""
    kind = "too_large" if status == 413 else "value_error"
    return HTTPException(status, [field_error("file", reason, ["body", "file"], kind)])


def too_large(max_bytes: int) -> HTTPException:
    return file_error(413, f"larger than the upload limit of {describe_bytes(max_bytes)}")


def check_content_length(request: Request, max_bytes: int) -> None:
    """Refuse (413) a request that says up front its body is over the limit."""
    raw = request.headers.get("content-length")
    if raw is None or not raw.strip().isdigit():
        return  # chunked (or no body): the running count in `read` applies
    if int(raw) > max_bytes + MULTIPART_OVERHEAD:
        raise too_large(max_bytes)


class Refused(Exception):
    """Stop reading the body and answer with this error."""

    def __init__(self, error: HTTPException):
        self.error = error


class MultipartUpload:
    """Streams a multipart body: the part `file` into a temporary file in `folder`, the
    `wanted` fields into `fields`, other parts dropped."""

    def __init__(self, folder: Path, max_file_bytes: int, wanted: tuple[str, ...] = ()):
        self.folder = folder
        self.max_file_bytes = max_file_bytes
        self.max_body_bytes = max_file_bytes + MULTIPART_OVERHEAD
        self.wanted = wanted
        self.path: Path | None = None
        self.filename: str | None = None
        self.fields: dict[str, str] = {}
        self.complete = False  # the part `file` ended with its boundary
        self._file: IO[bytes] | None = None
        self._in_file = False
        self._field: str | None = None  # the wanted field being read
        self._field_value = bytearray()
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
        self._field = None

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
        name = options.get(b"name", b"").decode("utf-8", errors="replace")
        if name in self.wanted:
            self._field = name
            self._field_value = bytearray()
            return
        if name != "file":
            return
        if self.path is not None:
            raise Refused(file_error(422, "send one file, not several"))
        self.filename = options.get(b"filename", b"").decode("utf-8", errors="replace")
        fd, tmp = tempfile.mkstemp(prefix=".upload-", suffix=".part", dir=self.folder)
        self.path = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._in_file = True

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is not None:
            self._field_value += data[start:end]
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise Refused(unprocessable(self._field, f"longer than {MAX_FIELD_BYTES} bytes"))
            return
        if not self._in_file:
            return
        self._file_bytes += end - start
        if self._file_bytes > self.max_file_bytes:
            raise Refused(too_large(self.max_file_bytes))
        self._pending.append(data[start:end])

    def _on_part_end(self) -> None:
        if self._field is not None:
            if self._field in self.fields:
                raise Refused(unprocessable(self._field, "send it once, not several times"))
            self.fields[self._field] = self._field_value.decode("utf-8", errors="replace")
            self._field = None
        if self._in_file:
            self._in_file = False
            self.complete = True

    def _flush(self) -> None:
        assert self._file is not None
        for piece in self._pending:
            self._file.write(piece)
        self._pending.clear()

    # ---- driving it --------------------------------------------------------------------

    def _callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._on_part_begin,
            "on_part_data": self._on_part_data,
            "on_part_end": self._on_part_end,
            "on_header_field": self._on_header_field,
            "on_header_value": self._on_header_value,
            "on_header_end": self._on_header_end,
            "on_headers_finished": self._on_headers_finished,
        }

    async def read(self, request: Request) -> None:
        """Read the whole body; Refused on any problem (the caller removes `path`)."""
        content_type, params = parse_options_header(request.headers.get("content-type"))
        boundary = params.get(b"boundary")
        if content_type != b"multipart/form-data" or not boundary:
            raise Refused(file_error(422, "send the file as multipart/form-data, field `file`"))
        try:
            parser = MultipartParser(boundary, self._callbacks())
            async for chunk in request.stream():
                self._body_bytes += len(chunk)
                if self._body_bytes > self.max_body_bytes:
                    raise Refused(too_large(self.max_file_bytes))
                parser.write(chunk)
                if self._pending:
                    await run_in_threadpool(self._flush)
            parser.finalize()
        except FormParserError as exc:
            raise Refused(file_error(422, f"malformed multipart body ({exc})")) from None
        finally:
            if self._file is not None:
                self._file.close()
        if self.path is None:
            raise Refused(file_error(422, "Field required"))
        if not self.complete:
            raise Refused(file_error(422, "the multipart body ended inside the file"))
