"""Service settings from the environment (prefix GANFORGE_), DESIGN.md section 7."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GANFORGE_", extra="ignore")

    # SQLite (WAL mode) by default, so `ganforge up` needs no server.
    database_url: str = "sqlite:///./var/ganforge.db"
    # None: kombu's SQLAlchemy transport on a SQLite file under ./var.
    broker_url: str | None = None
    artifact_dir: Path = Path("./var/artifacts")
    # Where samples, checkpoints and datasets live (app/store.py): file:///path, s3://bucket/
    # prefix or db. Unset: the folder GANFORGE_ARTIFACT_DIR.
    artifact_url: str | None = None
    # S3-compatible services other than AWS (MinIO, Ceph, R2); credentials and region come
    # from the usual AWS settings (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_DEFAULT_REGION, ...).
    s3_endpoint_url: str | None = None
    # Local copies of a remote store's datasets (the trainer memory-maps them), and uploads on
    # their way in. GANFORGE_CACHE_DIR also holds the digits classifier (trainer.evaluation).
    cache_dir: Path = Path("./var/cache")
    # Retention defaults for jobs whose spec has no `retention` (0: keep every checkpoint).
    keep_last: Annotated[int, Field(ge=0)] = 0
    keep_best: Annotated[int, Field(ge=0)] = 0
    # A checkpoint retention or a DELETE removes stays in the store this long after its row
    # is gone (app/retention.py), so a download or `generate` that read the row just before
    # finishes reading it.
    delete_grace_seconds: Annotated[float, Field(ge=0)] = 60.0
    # A worker's claim on a job lasts this long unless its heartbeat (every 0.5 s) extends it;
    # the reconciler requeues a job whose lease ran out (its worker died).
    lease_seconds: Annotated[float, Field(gt=0)] = 60.0
    # A queued job not taken after this long, while the broker holds fewer messages than there
    # are queued jobs, has its message sent again (the broker lost it).
    resend_after_seconds: Annotated[float, Field(gt=0)] = 30.0
    # How often each worker runs the reconciler.
    reconcile_every_seconds: Annotated[float, Field(gt=0)] = 10.0
    # Redis: seconds before an unacknowledged message is delivered again. The job's lease, not
    # this, guards execution, so a short value cannot run a job twice.
    broker_visibility_timeout: Annotated[int, Field(gt=0)] = 7 * 24 * 3600
    # Resource limits on submitted specs (a 422 names the field beyond them).
    max_steps: Annotated[int, Field(gt=0)] = 10_000_000
    max_batch_size: Annotated[int, Field(gt=0)] = 65_536
    max_width: Annotated[int, Field(gt=0)] = 4096
    max_depth: Annotated[int, Field(gt=0)] = 32
    # Prefixed to the queue names (`cpu`, `gpu`, `gpu2`, ...), so deployments can share a broker.
    queue_prefix: str = ""
    # Workers: the name their GPUs are recorded under (default: the host name). Workers that
    # share GPUs must share it; on one machine they do by default.
    host_name: str | None = None
    # Workers: treat `--gpus` as simulated devices on a machine without CUDA: jobs train on the
    # CPU, while allocation, CUDA_VISIBLE_DEVICES and reporting run for real (tests, demos).
    simulate_gpus: bool = False
    # Workers: how long a job waits for its GPUs (held by other jobs) before it goes back to
    # the queue for another worker.
    device_wait_seconds: Annotated[float, Field(ge=0)] = 5.0
    max_upload_bytes: int = 512 * 1024 * 1024
    # API tokens from the environment, beside the token table (`ganforge token create`):
    # comma-separated `NAME=TOKEN` or `NAME=sha256:HEX` (the token's SHA-256, so the secret
    # need not be in the environment). Any token, here or in the table, turns auth on.
    api_tokens: str = ""
    # Browser-facing safety (app/hostguard.py): the `Host` names served besides localhost,
    # 127.0.0.1 and [::1], comma-separated (`gan.example.com`, `*.example.com`; `*` only with
    # tokens on). `ganforge api|up --host ADDR` adds the names it is reached by itself.
    allowed_hosts: str = ""
    # Logs of the API, workers, job processes and `ganforge up` (app/logs.py): readable
    # `text`, or `json`, one object per line (time, level, logger, message, job_id) for a
    # log collector.
    log_format: Literal["text", "json"] = "text"

    @field_validator("api_tokens")
    @classmethod
    def _api_tokens_parse(cls, value: str) -> str:
        from app.tokens import parse_env_tokens

        parse_env_tokens(value)  # a ValueError names the entry
        return value

    @field_validator("artifact_url")
    @classmethod
    def _artifact_url_parse(cls, value: str | None) -> str | None:
        from app.store import check_url

        if value:  # empty (a compose file's unset default) means unset
            check_url(value)  # a StoreError (ValueError) names the setting and the reason
        return value or None

    @field_validator("s3_endpoint_url")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts_parse(cls, value: str) -> str:
        from app.hostguard import HostPolicy

        HostPolicy.parse(value)  # a ValueError names the entry
        return value

    @property
    def effective_broker_url(self) -> str:
        return self.broker_url or "sqla+sqlite:///./var/broker.db"


@lru_cache
def get_settings() -> Settings:
    return Settings()
