"""/api/specs and /api/presets: check a job spec before submitting it; ready-made specs.

`POST /api/specs/validate` takes `{"spec": {...}}` (JSON) or `{"yaml": "..."}` (YAML or JSON
text, as `ganforge train` reads a file) and answers what `POST /api/jobs` would make of it:
200 with the spec with defaults filled in, its warnings and which networks leak under its
schedule (trainer.leaks), or 422 with the same `detail[]` of `{field, message, loc, type}`
(fields prefixed `spec.`; a YAML syntax error is the field `spec`). Nothing is stored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import yaml
from fastapi import APIRouter, HTTPException
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.auth import public
from app.deps import SessionDep, SettingsDep, field_error
from app.presets import Preset, presets
from app.speccheck import service_problems
from trainer.errors import first_line
from trainer.leaks import leaking_networks
from trainer.spec import TrainSpec, describe_error

router = APIRouter(prefix="/api")

# The longest YAML text accepted: a full spec is about 1 KB.
MAX_YAML_CHARS = 100_000


class SpecCheck(BaseModel):
    """Send one of `spec` (a JSON object) or `yaml` (YAML or JSON text)."""

    model_config = ConfigDict(extra="forbid")

    spec: Any = Field(None, description="the spec as a JSON object")
    yaml: str | None = Field(None, description="the spec as YAML (or JSON) text")


class Leaks(BaseModel):
    d: bool = Field(description="D's optimizer steps on gradient from G's loss")
    g: bool = Field(description="G's optimizer steps on gradient from D's loss")


class SpecReport(BaseModel):
    spec: dict[str, Any] = Field(description="the spec with every default filled in")
    warnings: list[str] = Field(description="legal but harmful settings, one sentence each")
    leaks: Leaks
    micro_batch_size: int = Field(
        description="one rank's micro-batch: batch_size / (accumulation.steps x world_size)"
    )


class PresetList(BaseModel):
    items: list[Preset]


def _unprocessable(errors: list[dict[str, Any]]) -> HTTPException:
    return HTTPException(422, errors)


def _spec_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """The errors of a TrainSpec as POST /api/jobs words them: fields prefixed `spec.`."""
    out = []
    for err in exc.errors():
        field, reason = describe_error(err)
        out.append(
            field_error(
                f"spec.{field}" if field else "spec",
                reason,
                ["body", "spec", *err["loc"]],
                err["type"],
            )
        )
    return out


def _yaml_problem(exc: Exception) -> str:
    """One line about a YAML syntax error: the problem and where it is (1-based)."""
    if isinstance(exc, yaml.MarkedYAMLError):
        problem = exc.problem or exc.context or "not valid YAML"
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        context = f"{exc.context}: " if exc.context and exc.problem else ""
        return f"not valid YAML/JSON: {context}{problem}{where}"
    if isinstance(exc, RecursionError):
        return "not valid YAML/JSON: nested too deeply"
    return f"not valid YAML/JSON: {first_line(exc)}"


def _load_yaml(text: str) -> Any:
    if len(text) > MAX_YAML_CHARS:
        raise _unprocessable(
            [
                field_error(
                    "spec",
                    f"the YAML text is {len(text)} characters, over the limit of {MAX_YAML_CHARS}",
                    ["body", "yaml"],
                )
            ]
        )
    try:
        raw = yaml.safe_load(text)
    except Exception as exc:  # noqa: BLE001 - YAMLError, RecursionError, ValueError (bad dates)
        raise _unprocessable([field_error("spec", _yaml_problem(exc), ["body", "yaml"])]) from None
    return {} if raw is None else raw  # an empty document is the empty spec, as in the CLI


def _non_finite(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    """Paths of the NaN / infinite floats in a dumped spec (JSON cannot carry them)."""
    if isinstance(value, float) and not math.isfinite(value):
        yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _non_finite(item, (*path, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _non_finite(item, (*path, index))


@router.post(
    "/specs/validate",
    responses={422: {"description": "the spec is invalid: detail[] names each field"}},
)
@public
def validate_spec(body: SpecCheck, session: SessionDep, settings: SettingsDep) -> SpecReport:
    """Check a spec as `POST /api/jobs` would, without storing anything.

    200: the spec with defaults filled in, its `warnings`, and `leaks` (which networks step on
    gradient from the other network's loss under this schedule). 422: `detail[]` of
    `{field, message}` naming each problem (`spec.accumulation.steps`; `spec` for YAML syntax).
    """
    sent = body.model_fields_set & {"spec", "yaml"}
    if sent == {"spec", "yaml"}:
        raise _unprocessable(
            [field_error("yaml", "send either spec or yaml, not both", ["body", "yaml"])]
        )
    if not sent:
        raise _unprocessable(
            [field_error("spec", "Field required (send spec, an object, or yaml, text)", ["body"])]
        )
    raw = _load_yaml(body.yaml or "") if "yaml" in sent else body.spec
    if not isinstance(raw, dict):
        kind = "null" if raw is None else type(raw).__name__
        raise _unprocessable(
            [field_error("spec", f"must be a mapping of fields, got {kind}", ["body", "spec"])]
        )
    try:
        spec = TrainSpec.model_validate(raw)
    except ValidationError as exc:
        raise _unprocessable(_spec_errors(exc)) from None
    dumped = spec.model_dump(mode="json")
    bad = [
        field_error(
            "spec." + ".".join(str(p) for p in path),
            "Input should be a finite number",
            ["body", "spec", *path],
            "finite_number",
        )
        for path in _non_finite(dumped)
    ]
    if bad:
        raise _unprocessable(bad)
    # What POST /api/jobs checks beyond the spec itself (the same function).
    problems = service_problems(spec, session, settings)
    if problems:
        raise _unprocessable([field_error(field, reason, loc) for field, reason, loc in problems])
    schedule = spec.schedule
    leaking = leaking_networks(
        order=schedule.order, isolation=schedule.isolation, zero_grad=schedule.zero_grad
    )
    return SpecReport(
        spec=dumped,
        warnings=spec.warnings(),
        leaks=Leaks(d="d" in leaking, g="g" in leaking),
        micro_batch_size=spec.micro_batch_size,
    )


@router.get("/specs/defaults")
def default_spec() -> dict[str, Any]:
    """The default spec (what `{}` means), every field filled in."""
    return TrainSpec.model_validate({}).model_dump(mode="json")


@router.get("/presets")
def list_presets() -> PresetList:
    """Ready-made specs: the default ring recipe, the grid, digits, and the seed essay's
    broken update order beside its fixed twin (`twin` names the other, `difference` says how
    they differ); and the seed's study, whose `sweep` is a `POST /api/sweeps` body without
    `base` (its base is the preset's spec): every schedule on the ring, objective eval/modes."""
    return PresetList(items=presets())
