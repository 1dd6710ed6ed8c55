"""GET /api/datasets/{id}/preview.png: a look at an uploaded dataset's real examples.

- Images, (N, C, H, W) or (N, H, W) with C 1 or 3: up to 64 of them, evenly spaced through
  the dataset (the first and the last included), as a grid of 8 per row drawn by
  trainer.samples like a job's sample grid.
- Vectors, (N, D) with D >= 2: a scatter plot of the first two coordinates of up to 2,500.
- (N, 1): 422 naming why; there is nothing to draw.

Values are shown as the trainer sees them: uint8 scaled to [-1, 1], floats as they are (a
grid clips them to [-1, 1]). The stored .npy is memory-mapped (trainer.data.map_array), so
only the rows drawn are read, whatever the dataset's size.

Like the other artifact downloads it needs a token once tokens exist (the dashboard's <img>
sends the cookie). A dataset never changes under its id: the answer carries its SHA-256 as
the ETag, and a request that already holds it is a 304 with nothing rendered.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response

from app.auth import download
from app.deps import SessionDep, StoreDep
from app.models import Dataset
from app.store import ArtifactMissing, StoreError
from trainer.data import DataError, map_array, scale_uint8
from trainer.samples import GRID_MAX_IMAGES, image_grid_png, scatter_png

router = APIRouter(prefix="/api")

SCATTER_POINTS = 2_500


class NoPreview(ValueError):
    """The dataset's shape has nothing to draw; the message says why."""


def spread(count: int, most: int) -> np.ndarray:
    """Up to `most` row indices evenly spaced over `count` rows, first and last included."""
    return np.unique(np.linspace(0, count - 1, num=min(count, most)).round().astype(np.int64))


def _as_trained(rows: np.ndarray) -> np.ndarray:
    return scale_uint8(rows) if rows.dtype == np.uint8 else rows.astype(np.float64)


def preview_png(path: Path, *, title: str) -> bytes:
    """The preview of the array stored at `path` (see the module's docstring)."""
    array = map_array(path)  # (N, H, W) comes back as (N, 1, H, W)
    count = len(array)
    if array.ndim == 4:
        channels = array.shape[1]
        if channels not in (1, 3):
            raise NoPreview(f"its images have {channels} channels; a preview draws 1 or 3")
        return image_grid_png(_as_trained(array[spread(count, GRID_MAX_IMAGES)]), title=title)
    if array.shape[1] < 2:
        raise NoPreview(
            f"its examples are single numbers (shape ({count}, 1)): a preview draws images "
            "or the first two coordinates of vectors"
        )
    points = _as_trained(np.ascontiguousarray(array[spread(count, SCATTER_POINTS), :2]))
    if len(points) < count:
        title = f"{title} ({len(points):,} of {count:,})"
    return scatter_png(points, title=title, label="examples")


def _holds(if_none_match: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return etag in tags or "*" in tags


@router.get(
    "/datasets/{dataset_id}/preview.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        304: {"description": "the client's copy (If-None-Match) is current"},
        404: {"description": "no such dataset"},
        422: {"description": "the dataset's shape has nothing to draw"},
    },
)
@download
def dataset_preview(
    dataset_id: str, request: Request, session: SessionDep, store: StoreDep
) -> Response:
    """A PNG of the dataset's real examples: a grid of up to 64 images, or a scatter plot."""
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise HTTPException(404, f"dataset {dataset_id} not found")
    headers = {"ETag": f'"{row.sha256}"', "Cache-Control": "private, no-cache"}
    if _holds(request.headers.get("if-none-match", ""), headers["ETag"]):
        return Response(status_code=304, headers=headers)
    try:
        path = store.fetch(row.path, sha256=row.sha256)
    except ArtifactMissing:
        raise HTTPException(
            404, f"dataset {dataset_id}: its file is missing from the store"
        ) from None
    except StoreError as exc:  # a remote copy that fails its SHA-256
        raise HTTPException(409, f"dataset {dataset_id}: {exc}") from None
    try:
        png = preview_png(path, title=row.filename)
    except NoPreview as exc:
        raise HTTPException(422, f"dataset {dataset_id} has no preview: {exc}") from None
    except DataError as exc:  # a stored file that no longer reads as an array
        raise HTTPException(409, f"dataset {dataset_id}: its file is unreadable ({exc})") from None
    return Response(png, media_type="image/png", headers=headers)
