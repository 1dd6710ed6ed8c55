"""Request and response bodies of the REST API. The job spec is trainer.spec.TrainSpec itself."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.models import JobStatus
from trainer.spec import TrainSpec

Tag = Annotated[str, StringConstraints(min_length=1, max_length=50, pattern=r"^[\w.:/-]+$")]


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    spec: TrainSpec
    name: str | None = Field(None, max_length=200)
    tags: list[Tag] = Field(default_factory=list, max_length=20)
    priority: int = Field(0, ge=-100, le=100)

    @field_validator("tags")
    @classmethod
    def _unique(cls, tags: list[str]) -> list[str]:
        return list(dict.fromkeys(tags))


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str | None
    status: JobStatus
    step: int
    steps: int
    spec: dict[str, Any]
    warnings: list[str]
    error: str | None
    tags: list[str]
    priority: int
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None  # every timestamp is UTC (app.models.UTCDateTime)
    created_by: str | None = Field(None, description="the name of the token that submitted it")
    worker: str | None = Field(
        None, description="the worker process (`host:pid:id`) that ran its latest attempt"
    )
    devices: list[str] | None = Field(
        None, description="the GPUs of that worker's host its latest attempt held ([]: none)"
    )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")
