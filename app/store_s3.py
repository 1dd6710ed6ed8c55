"""The s3:// artifact store (app/store.py): any S3-compatible service, through boto3.

`GANFORGE_ARTIFACT_URL=s3://bucket/prefix` keeps every file at `prefix/<store path>` in the
bucket. AWS itself needs no endpoint; MinIO, Ceph, R2 and the like are named by
`GANFORGE_S3_ENDPOINT_URL`. Credentials and region come from boto3's usual chain
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE, instance roles, ...; AWS_REGION or
AWS_DEFAULT_REGION, else us-east-1).

S3 writes are atomic by nature: a PUT, or a multipart upload, is visible only once complete,
so a reader sees the old object or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import S3UploadFailedError
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError

from app.store import CHUNK, ArtifactMissing, ArtifactStore, StoreError, clean

_MIB = 1024 * 1024
# Objects above 16 MiB go up in 16 MiB parts, four at a time (S3 allows 10,000 parts: 160 GB).
_TRANSFER = TransferConfig(
    multipart_threshold=16 * _MIB, multipart_chunksize=16 * _MIB, max_concurrency=4
)
_MISSING_KEY = {"404", "NoSuchKey", "NotFound"}
_MISSING_BUCKET = "NoSuchBucket"
_DELETE_BATCH = 1000  # the most keys one DeleteObjects request takes


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class S3Store(ArtifactStore):
    """Files as objects under `prefix/` in one bucket; one boto3 client per store (boto3
    clients are thread-safe), made on first use and again in a forked child process."""

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None, cache: Path):
        prefix = "/".join(part for part in prefix.split("/") if part)
        self.bucket = bucket
        self.prefix = clean(prefix) if prefix else ""
        self.endpoint_url = endpoint_url
        self.url = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self.cache = cache
        self._client: Any = None
        self._pid = 0
        self._lock = threading.Lock()

    # ---- the client ----------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The boto3 S3 client; the first use also checks that the bucket exists."""
        if self._client is not None and self._pid == os.getpid():
            return self._client
        with self._lock:
            if self._client is None or self._pid != os.getpid():
                client = self._new_client()
                self._check_bucket(client)
                self._client, self._pid = client, os.getpid()
        return self._client

    def _new_client(self) -> Any:
        session = boto3.session.Session()
        options: dict[str, Any] = {"retries": {"max_attempts": 5, "mode": "standard"}}
        if self.endpoint_url is not None:
            # Other S3 services: path-style URLs (http://minio:9000/bucket/key; a bucket
            # subdomain of a compose service name does not resolve), and checksums only where
            # the API requires them (botocore's default CRC trailers since 1.36 are refused by
            # several S3-compatible servers; older botocore has neither the default nor the
            # option).
            options["s3"] = {"addressing_style": "path"}
            if "request_checksum_calculation" in Config.OPTION_DEFAULTS:
                options["request_checksum_calculation"] = "when_required"
                options["response_checksum_validation"] = "when_required"
        return session.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=session.region_name or "us-east-1",
            config=Config(**options),
        )

    def _check_bucket(self, client: Any) -> None:
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if _code(exc) in {"404", "NotFound", _MISSING_BUCKET}:
                raise self._no_bucket(client) from None
            # 403 and the like: credentials that may not list the bucket but may still read
            # and write its objects; each operation reports its own refusal.

    def _no_bucket(self, client: Any = None) -> StoreError:
        endpoint = (client or self._client).meta.endpoint_url
        return StoreError(
            f"GANFORGE_ARTIFACT_URL: bucket {self.bucket!r} does not exist at {endpoint}"
        )

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """A bucket that vanished becomes the StoreError that says so."""
        try:
            yield
        except ClientError as exc:
            if _code(exc) == _MISSING_BUCKET:
                raise self._no_bucket() from None
            raise

    def key(self, relative: str) -> str:
        """The object key of a store path; refuses paths outside the store."""
        relative = clean(relative)
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _folder(self, prefix: str) -> str:
        """The key prefix of a store folder ('' for the whole store), ending in '/'."""
        if prefix:
            return self.key(prefix) + "/"
        return f"{self.prefix}/" if self.prefix else ""

    # ---- the store's operations ----------------------------------------------------------

    def write(self, relative: str, data: bytes) -> None:
        key = self.key(relative)
        with self._errors():
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)

    def write_file(self, relative: str, source: Path, *, move: bool = False) -> None:
        key = self.key(relative)
        client = self.client
        try:
            client.upload_file(str(source), self.bucket, key, Config=_TRANSFER)
        except S3UploadFailedError as exc:
            if _MISSING_BUCKET in str(exc):
                raise self._no_bucket(client) from None
            raise
        if move:
            Path(source).unlink(missing_ok=True)

    def size(self, relative: str) -> int | None:
        key = self.key(relative)
        try:
            with self._errors():
                head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY:
                return None
            raise
        return int(head["ContentLength"])

    def _get(self, relative: str) -> Any:
        """The object's streaming body; ArtifactMissing when there is none."""
        key = self.key(relative)
        try:
            with self._errors():
                return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
        except ClientError as exc:
            if _code(exc) in _MISSING_KEY:
                raise ArtifactMissing(relative) from None
            raise

    def chunks(self, relative: str, chunk_size: int = CHUNK) -> Iterator[bytes]:
        return _body_chunks(self._get(relative), chunk_size)

    def read(self, relative: str) -> bytes:
        body = self._get(relative)
        try:
            return bytes(body.read())
        finally:
            body.close()

    def delete(self, relative: str) -> None:
        key = self.key(relative)
        with self._errors():
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> None:
        keys = list(self._keys(self._folder(prefix)))
        for start in range(0, len(keys), _DELETE_BATCH):
            batch = [{"Key": key} for key, _ in keys[start : start + _DELETE_BATCH]]
            with self._errors():
                reply = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            if errors := reply.get("Errors"):
                first = errors[0]
                raise StoreError(
                    f"{self.url}: could not delete {len(errors)} object(s), "
                    f"{first.get('Key')}: {first.get('Code')} {first.get('Message', '')}".rstrip()
                )

    def list(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        skip = len(self.prefix) + 1 if self.prefix else 0
        for key, size in self._keys(self._folder(prefix)):
            relative = key[skip:]
            try:
                if clean(relative) != relative:
                    continue  # not a store path ('a//b', a console's 'folder/' marker)
            except StoreError:
                continue
            yield relative, size

    def _keys(self, folder: str) -> Iterator[tuple[str, int]]:
        """(key, size) of every object whose key starts with `folder`, in key order."""
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=folder
        )
        with self._errors():
            for page in pages:
                for item in page.get("Contents", []):
                    yield str(item["Key"]), int(item["Size"])

    def describe(self) -> str:
        return f"{self.url} at {self.endpoint_url}" if self.endpoint_url else self.url

    def close(self) -> None:
        """Drop the client and its connections (the next use makes another)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


def _body_chunks(body: Any, chunk_size: int) -> Iterator[bytes]:
    try:
        for chunk in body.iter_chunks(chunk_size):
            if chunk:
                yield bytes(chunk)
    finally:
        body.close()
