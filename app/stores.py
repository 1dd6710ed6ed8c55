"""Opening the artifact store a URL or the settings name (app/store.py holds the interface
and the folder store; app/store_s3.py and app/store_db.py the others)."""

from __future__ import annotations

from pathlib import Path

from app.settings import Settings
from app.store import ArtifactStore, FileStore, StoreError, check_url
from app.store_db import DatabaseStore
from app.store_s3 import S3Store


def open_store(
    url: str,
    *,
    database_url: str | None = None,
    cache: Path | None = None,
    s3_endpoint_url: str | None = None,
) -> ArtifactStore:
    """The store a URL names: `file:///path` (or a plain path), `s3://bucket/prefix`, `db`."""
    kind, where = check_url(url)
    cache = (cache or Path("./var/cache")).resolve() / "artifacts"
    if kind == "db":
        if database_url is None:
            raise StoreError("GANFORGE_ARTIFACT_URL: db needs the service's database URL")
        return DatabaseStore(database_url, cache=cache)
    if kind == "s3":
        bucket, _, prefix = where.partition("/")
        return S3Store(bucket, prefix, endpoint_url=s3_endpoint_url, cache=cache)
    return FileStore(where)


def store_url(settings: Settings) -> str:
    """GANFORGE_ARTIFACT_URL, else GANFORGE_ARTIFACT_DIR as a folder store."""
    return settings.artifact_url or str(Path(settings.artifact_dir).resolve())


def make_store(settings: Settings, url: str | None = None) -> ArtifactStore:
    """The store the settings name (or `url`, with the settings' database and S3 endpoint)."""
    return open_store(
        url or store_url(settings),
        database_url=settings.database_url,
        cache=settings.cache_dir,
        s3_endpoint_url=settings.s3_endpoint_url,
    )
