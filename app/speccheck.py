"""What the service checks in a spec beyond TrainSpec itself: no local paths, datasets that
exist, and the resource limits of this server (GANFORGE_MAX_*). POST /api/jobs and
POST /api/specs/validate both use it, so they answer the same."""

from __future__ import annotations

from sqlalchemy.orm import Session

from app.models import Dataset
from app.settings import Settings
from trainer.spec import TrainSpec


def service_problems(
    spec: TrainSpec, session: Session, settings: Settings
) -> list[tuple[str, str, list[str | int]]]:
    """(field, reason, loc) for each problem; empty when the server can run the spec."""
    problems: list[tuple[str, str, list[str | int]]] = []
    if spec.data.path is not None:
        problems.append(
            (
                "spec.data.path",
                "local files are for `ganforge train`; upload with POST /api/datasets",
                ["body", "spec", "data", "path"],
            )
        )
    if spec.data.dataset_id is not None and session.get(Dataset, spec.data.dataset_id) is None:
        problems.append(
            (
                "spec.data.dataset_id",
                f"no dataset {spec.data.dataset_id}",
                ["body", "spec", "data", "dataset_id"],
            )
        )
    limits: list[tuple[list[str | int], int, int, str]] = [
        (["steps"], spec.steps, settings.max_steps, "GANFORGE_MAX_STEPS"),
        (["batch_size"], spec.batch_size, settings.max_batch_size, "GANFORGE_MAX_BATCH_SIZE"),
        (["model", "width"], spec.model.width, settings.max_width, "GANFORGE_MAX_WIDTH"),
        (["model", "depth"], spec.model.depth, settings.max_depth, "GANFORGE_MAX_DEPTH"),
    ]
    for path, value, limit, variable in limits:
        if value > limit:
            field = "spec." + ".".join(str(p) for p in path)
            reason = f"at most {limit} on this server ({variable}), got {value}"
            problems.append((field, reason, ["body", "spec", *path]))
    return problems
