"""A sweep's search space against the one spec (trainer.spec.TrainSpec): which dotted field
paths exist, a trial's spec (the base with the chosen values at their paths), Optuna's
distributions for the space, and the checks `POST /api/sweeps` answers a 422 with."""

from __future__ import annotations

import copy
import itertools
import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from pydantic import BaseModel
from sqlalchemy.orm import Session

from app.schemas import SpaceDimension, SweepCreate
from app.settings import Settings
from app.speccheck import service_problems
from trainer.spec import SpecError, TrainSpec, parse_spec

# A grid is every combination of its choice lists; each is checked at submission.
MAX_GRID = 10_000

Problem = tuple[str, str, list[str | int]]


def leaf_annotation(path: str) -> Any:
    """The type of the TrainSpec field at a dotted path; KeyError naming the first unknown
    part, or a path that ends at a section (a section is not a value)."""
    model: type[BaseModel] = TrainSpec
    parts = path.split(".")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            where = ".".join(parts[:i]) or "the spec"
            raise KeyError(f"{part!r} is not a field of {where}")
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if i == len(parts) - 1:
                raise KeyError(f"{path} is a section; vary one of its fields")
            model = annotation
        elif i < len(parts) - 1:
            raise KeyError(
                f"{'.'.join(parts[: i + 1])} is a value, it has no field {parts[i + 1]!r}"
            )
        else:
            return annotation
    raise KeyError(path)  # an empty path never gets here: split gives [""], not a field


def merged(base: Mapping[str, Any], params: Mapping[str, Any]) -> dict[str, Any]:
    """The base spec (as submitted) with each value set at its dotted path."""
    raw = copy.deepcopy(dict(base))
    for path, value in params.items():
        *sections, leaf = path.split(".")
        node = raw
        for part in sections:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise SpecError([f"{path}: base has {part} = {child!r}, not a section"])
            node = child
        node[leaf] = value
    return raw


def trial_spec(base: Mapping[str, Any], params: Mapping[str, Any]) -> TrainSpec:
    """The spec a trial runs; SpecError (one line per problem) when it is invalid."""
    return parse_spec(merged(base, params))


def distributions(space: Mapping[str, SpaceDimension]) -> dict[str, BaseDistribution]:
    """Optuna's distribution of each varied field, in the space's order."""
    out: dict[str, BaseDistribution] = {}
    for path, dim in space.items():
        if dim.values is not None:
            out[path] = CategoricalDistribution(dim.values)
        elif dim.integer:
            assert dim.low is not None and dim.high is not None
            out[path] = IntDistribution(int(dim.low), int(dim.high), log=dim.log)
        else:
            assert dim.low is not None and dim.high is not None
            out[path] = FloatDistribution(dim.low, dim.high, log=dim.log)
    return out


def grid_size(space: Mapping[str, SpaceDimension]) -> int:
    return math.prod(len(dim.values or ()) for dim in space.values())


def _show(value: Any) -> str:
    return json.dumps(value)


def _field(path: str, *rest: str | int) -> tuple[str, list[str | int]]:
    return f"space.{path}", ["body", "space", path, *rest]


def _spec_problem(
    params: Mapping[str, Any], base: Mapping[str, Any], session: Session, settings: Settings
) -> str | None:
    """Why the trial spec of `params` cannot run here (invalid, or refused by this server)."""
    try:
        spec = trial_spec(base, params)
    except SpecError as exc:
        return str(exc)
    found = service_problems(spec, session, settings)
    if found:
        return "; ".join(f"{field.removeprefix('spec.')}: {reason}" for field, reason, _ in found)
    return None


def check(body: SweepCreate, session: Session, settings: Settings) -> list[Problem]:
    """(field, reason, loc) for each problem of a submitted sweep; empty when every trial it
    may create is checked (grid: every combination; random and tpe: each choice and each end
    of each range with the base; combinations only invalid together are skipped later)."""
    try:
        parse_spec(body.base)
    except SpecError as exc:
        return [("base", line, ["body", "base"]) for line in exc.problems]
    problems: list[Problem] = []
    for path, dim in body.space.items():
        problems += _dimension_problems(body, path, dim)
    if problems:
        return problems
    # The base's own fields, as far as the server is concerned (a varied one is the space's).
    varied = {f"spec.{path}" for path in body.space}
    for field, reason, _ in service_problems(parse_spec(body.base), session, settings):
        if field not in varied:
            problems.append((f"base.{field.removeprefix('spec.')}", reason, ["body", "base"]))
    if problems:
        return problems
    for path, dim in body.space.items():
        for rest, value in _probes(dim):
            found = _spec_problem({path: value}, body.base, session, settings)
            if found:
                field, loc = _field(path, *rest)
                problems.append((field, f"{_show(value)} makes an invalid spec: {found}", loc))
    if problems or body.method != "grid":
        return problems
    return _grid_problems(body, session, settings)


def _dimension_problems(body: SweepCreate, path: str, dim: SpaceDimension) -> list[Problem]:
    field, loc = _field(path)
    try:
        annotation = leaf_annotation(path)
    except KeyError as exc:
        return [(field, f"unknown field: {exc.args[0]}", loc)]
    if body.method == "grid" and dim.values is None:
        reason = 'grid needs a choice list ({"values": [...]}); a range is for random or tpe'
        return [(field, reason, loc)]
    if dim.values is None and annotation is int and not dim.integer:
        return [(field, 'an integer field: give the range "int": true', loc)]
    return []


def _probes(dim: SpaceDimension) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """The values checked alone: every choice, or both ends of a range."""
    if dim.values is not None:
        for i, value in enumerate(dim.values):
            yield ("values", i), value
        return
    for end in ("low", "high"):
        value = getattr(dim, end)
        yield (end,), int(value) if dim.integer else value


def _grid_problems(body: SweepCreate, session: Session, settings: Settings) -> list[Problem]:
    size = grid_size(body.space)
    if size > MAX_GRID:
        return [("space", f"a grid of {size} combinations; at most {MAX_GRID}", ["body", "space"])]
    paths = list(body.space)
    lists = [body.space[p].values or [] for p in paths]
    for combination in itertools.product(*lists):
        params = dict(zip(paths, combination, strict=True))
        reason = _spec_problem(params, body.base, session, settings)
        if reason:
            named = [p for p in paths if reason.startswith(f"{p}:") or f"; {p}:" in reason]
            path = named[0] if named else paths[-1]
            field, loc = _field(path)
            shown = ", ".join(f"{p}={_show(v)}" for p, v in params.items())
            return [
                (field, f"{_show(params[path])} with {shown} makes an invalid spec: {reason}", loc)
            ]
    return []
