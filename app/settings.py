"""Service settings from the environment (prefix GANFORGE_), DESIGN.md section 7."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GANFORGE_", extra="ignore")

    # SQLite (WAL mode) by default, so `ganforge up` needs no server.
    database_url: str = "sqlite:///./var/ganforge.db"
    # None: kombu's SQLAlchemy transport on a SQLite file under ./var.
    broker_url: str | None = None
    artifact_dir: Path = Path("./var/artifacts")
    # Prefixed to the queue names (`gpu`, `cpu`), so several deployments can share a broker.
    queue_prefix: str = ""
    max_upload_bytes: int = 512 * 1024 * 1024

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "sqla+sqlite:///./var/broker.db"


@lru_cache
def get_settings() -> Settings:
    return Settings()
