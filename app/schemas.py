"""Request and response bodies of the REST API. The job spec is trainer.spec.TrainSpec itself."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    StringConstraints,
    field_validator,
    model_validator,
)

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
    sweep_id: str | None = Field(None, description="the sweep this job is a trial of")
    trial_number: int | None = Field(None, description="its number in the sweep's study")
    trial_params: dict[str, Any] | None = Field(None, description="the values the study chose")
    pruned_at: int | None = Field(None, description="the step its sweep's pruner stopped it at")
    prune_rule: str | None = None
    artifact_bytes: int = Field(
        0,
        description="bytes its checkpoints (tensors and sidecars) and samples take in the "
        "artifact store, from the sizes recorded with them (a size stored before there were "
        "sizes counts 0)",
    )


class JobPage(BaseModel):
    items: list[JobOut]
    next_cursor: str | None = Field(None, description="pass as `cursor` for the next page")


# Sweeps (DESIGN.md section 9). A sweep's trials are jobs; app.sweep_space checks a space
# against the spec, app.sweeps stores and reads sweeps.

SweepMethod = Literal["grid", "random", "tpe"]
PrunerKind = Literal["none", "median", "asha", "hyperband"]
Choice = StrictStr | StrictBool | StrictInt | StrictFloat | None

# The options each pruner takes (Optuna's MedianPruner, SuccessiveHalvingPruner,
# HyperbandPruner), by our names.
PRUNER_OPTIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "median": ("startup_trials", "warmup_steps", "interval_steps", "min_trials"),
    "asha": ("min_resource", "reduction_factor", "min_early_stopping_rate"),
    "hyperband": ("min_resource", "max_resource", "reduction_factor"),
}


class SpaceDimension(BaseModel):
    """One varied field: a choice list `{"values": [...]}` or a range `{"low", "high", "log",
    "int"}` (`int`: whole numbers; `log`: sampled on a log scale)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)

    values: list[Choice] | None = Field(None, min_length=1, max_length=1000)
    low: float | None = None
    high: float | None = None
    log: bool = False
    integer: bool = Field(False, alias="int")

    @model_validator(mode="after")
    def _one_form(self) -> SpaceDimension:
        ranged = self.low is not None or self.high is not None
        if self.values is not None:
            if ranged or self.log or self.integer:
                raise ValueError("either a choice list (values) or a range (low, high), not both")
            if len({json.dumps(v) for v in self.values}) != len(self.values):
                raise ValueError(f"values repeat: {self.values}")
            return self
        if self.low is None or self.high is None:
            raise ValueError('needs {"values": [...]} or a range {"low": a, "high": b}')
        if self.low >= self.high:
            raise ValueError(f"low must be below high, got low={self.low}, high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got low={self.low}")
        if self.integer and not (self.low.is_integer() and self.high.is_integer()):
            raise ValueError(f"an int range needs whole ends, got {self.low} and {self.high}")
        return self

    def public(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_defaults=True)


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(min_length=1, max_length=100, description="e.g. eval/hq, eval/fid")
    mode: Literal["max", "min"] = "max"


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(ge=1, le=10_000, description="trial jobs in all")
    concurrent: int = Field(1, ge=1, le=100, description="trial jobs queued or running at once")


class PrunerConfig(BaseModel):
    """A pruner with options; the plain name (`"median"`) takes Optuna's defaults."""

    model_config = ConfigDict(extra="forbid")

    kind: PrunerKind = "none"
    startup_trials: int | None = Field(None, ge=0, description="median: trials before pruning")
    warmup_steps: int | None = Field(None, ge=0, description="median: steps before pruning")
    interval_steps: int | None = Field(None, ge=1)
    min_trials: int | None = Field(None, ge=1)
    min_resource: int | None = Field(None, ge=1, description="asha, hyperband: in steps")
    max_resource: int | None = Field(None, ge=1, description="hyperband: in steps")
    reduction_factor: int | None = Field(None, ge=2)
    min_early_stopping_rate: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _options_of_the_kind(self) -> PrunerConfig:
        allowed = PRUNER_OPTIONS[self.kind]
        given = [k for k in self.model_fields_set if k != "kind" and getattr(self, k) is not None]
        wrong = [k for k in given if k not in allowed]
        if wrong:
            takes = ", ".join(allowed) or "no options"
            raise ValueError(f"{self.kind} pruner takes {takes}; got {', '.join(sorted(wrong))}")
        return self

    def public(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, max_length=200)
    base: dict[str, Any] = Field(
        default_factory=dict, description="the spec every trial starts from (a TrainSpec)"
    )
    space: dict[str, SpaceDimension] = Field(
        min_length=1, max_length=20, description='dotted spec field -> {"values"} or a range'
    )
    method: SweepMethod = "tpe"
    objective: Objective
    budget: Budget
    pruner: PrunerConfig = Field(
        PrunerConfig.model_validate({"kind": "none"}),
        description='none, median, asha or hyperband: a name, or {"kind": name, options...}',
    )
    priority: int = Field(0, ge=-100, le=100, description="the priority of its trial jobs")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="the sampler's seed")

    @field_validator("pruner", mode="before")
    @classmethod
    def _pruner_by_name(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value


class TrialOut(BaseModel):
    job_id: str
    number: int
    params: dict[str, Any]
    status: JobStatus
    value: float | None = Field(description="the objective at the trial's last evaluation")
    pruned_at: int | None
    prune_rule: str | None
    step: int
    steps: int
    steps_per_second: float | None = Field(description="mean perf/steps_per_s of the job")
    audit_leak: float | None = Field(description="mean of audit/leak_d and audit/leak_g")


class BestTrial(BaseModel):
    job_id: str
    value: float
    params: dict[str, Any]


class SkippedTrial(BaseModel):
    number: int
    params: dict[str, Any]
    error: str


class SweepOut(BaseModel):
    id: str
    name: str | None
    status: Literal["running", "cancelled", "finished"]
    method: SweepMethod
    base: dict[str, Any]
    space: dict[str, dict[str, Any]]
    objective: Objective
    budget: Budget
    pruner: dict[str, Any]
    priority: int
    seed: int | None
    counts: dict[str, int] = Field(description="trial jobs by status")
    best: BestTrial | None
    trials: list[TrialOut]
    skipped: list[SkippedTrial] = Field(
        description="combinations the study proposed whose spec is invalid (not run)"
    )
    created_at: datetime
    finished_at: datetime | None
    created_by: str | None


class SweepPage(BaseModel):
    items: list[SweepOut]
